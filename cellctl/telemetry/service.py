"""The MQTT component of the daemon: link, publisher, spool, commands, liveness.

Registered in `App.components` when the config has an `[mqtt]` section. It
owns one TaskGroup with its loops (link, bus consumer, spool writer, spool
sender, sample batcher, command workers). On a clean shutdown it commits what
is pending, publishes the retained `offline` status itself (the broker sends
the will only when a connection dies) and disconnects; the spool keeps what
the broker has not acknowledged for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import structlog

from cellctl.commands import CommandHandler, JobService
from cellctl.config import Cell, MqttSection
from cellctl.events import EventBus, Subscription
from cellctl.store import Store
from cellctl.supervisor import Supervisor
from cellctl.tasks import TaskGroup
from cellctl.telemetry.broker import embedded_broker
from cellctl.telemetry.encoding import Encoding, JobEvent, JsonEncoding, Outgoing
from cellctl.telemetry.link import LinkSettings, MqttLink
from cellctl.telemetry.pipeline import Pipeline
from cellctl.telemetry.publisher import Publisher
from cellctl.telemetry.sender import SpoolSender
from cellctl.telemetry.spool import Spool
from cellctl.telemetry.topics import Topics

log = structlog.get_logger("cellctl.mqtt")

STORE_FILE = "cellctl.db"
GOODBYE_TIMEOUT_S = 3.0


class MqttService:
    def __init__(
        self,
        cell: Cell,
        bus: EventBus,
        supervisor: Supervisor,
        jobs: JobService | None = None,
        store: Store | None = None,
        encoding: Encoding | None = None,
    ) -> None:
        assert cell.config.mqtt is not None
        self.cell = cell
        self.cfg: MqttSection = cell.config.mqtt
        self.bus = bus
        self.supervisor = supervisor
        self.jobs = jobs
        self._shared_store = store
        self.topics = Topics(cell.name, self.cfg.topic_prefix)
        self.encoding: Encoding = encoding or JsonEncoding(self.topics)
        self.boot = uuid.uuid4().hex[:12]
        # Subscribed now, before any device runs: the first state changes are not missed.
        self._sub = bus.subscribe("mqtt", lossless=True)
        self.ready = asyncio.Event()
        self.embedded_started = False
        # Set once run() built them (tests and the benchmark look at them).
        self.link: MqttLink | None = None
        self.spool: Spool | None = None
        self.publisher: Publisher | None = None
        self.sender: SpoolSender | None = None
        self.commands: CommandHandler | None = None

    @property
    def store_path(self) -> Path:
        return self.cell.state_dir / STORE_FILE

    def job_event(self, ev: JobEvent) -> None:
        """For the job service: a job/step transition to publish (spooled, QoS 1)."""
        if self.publisher is not None:
            self.publisher.job_event(ev)

    async def run(self) -> None:
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            mqtt5 = cfg.protocol == "5"
            if cfg.embedded:
                self.embedded_started = await stack.enter_async_context(
                    embedded_broker(cfg.host, cfg.port)
                )
                if self.embedded_started and mqtt5:
                    log.info("the embedded broker speaks MQTT 3.1.1; using 3.1.1")
                    mqtt5 = False
            store = self._shared_store
            if store is None:
                store = await stack.enter_async_context(Store(self.store_path))
            await self._serve(store, mqtt5)

    async def _serve(self, store: Store, mqtt5: bool) -> None:
        cfg = self.cfg
        enc = self.encoding
        settings = LinkSettings.from_config(cfg, f"cellctl-{self.cell.name}")
        if not mqtt5:
            settings = LinkSettings(**{**settings.__dict__, "mqtt5": False})
        link = MqttLink(
            settings,
            will=enc.status(False, "connection lost", self.boot),
            subscriptions=[(self.topics.commands, 1)],
        )
        pipe = await Pipeline.open(
            store,
            link,
            enc,
            self.cell.config.telemetry,
            window=cfg.max_inflight,
            spool_max=cfg.spool_max,
            commit_s=cfg.spool_commit_s,
            samples_qos=cfg.samples_qos,
        )
        spool, sender, publisher = pipe.spool, pipe.sender, pipe.publisher

        def reply(out: Outgoing, correlation: bytes | None) -> None:
            link.publish(out, link.reply_properties(correlation))

        commands = CommandHandler(
            self.topics,
            store,
            lambda: self.supervisor.runners,
            reply,
            publisher.audit,
            self.jobs,
        )
        await commands.load()

        def connected() -> None:
            link.publish(enc.status(True, "", self.boot))
            sender.connected()
            publisher.publish_spool_stats(force=True)

        link.on_message = commands.on_message
        link.on_connected = connected
        self.link, self.spool, self.publisher = link, spool, publisher
        self.sender, self.commands = sender, commands

        sub = self._sub
        try:
            async with TaskGroup() as tg:
                pipe.start(tg, sub)
                tg.create_task(publisher.batcher(), name="mqtt-batcher")
                tg.create_task(publisher.spool_stats(), name="mqtt-spool-stats")
                tg.create_task(commands.run(), name="mqtt-commands")
                self.ready.set()
                try:
                    await asyncio.Event().wait()
                finally:
                    # Cancelled: say goodbye while the link still runs.
                    await self._goodbye(publisher, spool, link, sub)
        finally:
            self.bus.unsubscribe(sub)

    async def _goodbye(
        self, publisher: Publisher, spool: Spool, link: MqttLink, sub: Subscription
    ) -> None:
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                publisher.drain(sub)
                await spool.flush()
                await link.close(self.encoding.status(False, "shutdown", self.boot))
        except TimeoutError:
            log.warning("MQTT goodbye took too long; the will says offline instead")
        except Exception as exc:
            log.error("MQTT goodbye failed", exc_info=exc)
