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
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from cellctl.access import Access
from cellctl.commands import CommandHandler, JobService
from cellctl.config import Cell, MqttSection
from cellctl.errors import ConfigError
from cellctl.events import EventBus, Subscription
from cellctl.jobs.plan_feed import PlanFeed
from cellctl.model import DeviceState, MetricSpec
from cellctl.store import Store
from cellctl.supervisor import Supervisor
from cellctl.tasks import TaskGroup
from cellctl.telemetry.broker import (
    Anonymous,
    BrokerAccess,
    embedded_broker,
    listening,
    probe_anonymous,
)
from cellctl.telemetry.encoding import (
    AuditRecord,
    Encoding,
    JobEvent,
    JsonEncoding,
    Kind,
    Outgoing,
    dumps,
)
from cellctl.telemetry.facts import CellFacts
from cellctl.telemetry.link import LinkSettings, MqttLink
from cellctl.telemetry.pipeline import Pipeline
from cellctl.telemetry.publisher import Publisher
from cellctl.telemetry.sender import SpoolSender
from cellctl.telemetry.spool import Spool
from cellctl.telemetry.topics import Topics
from cellctl.uploads import ProgramUploads

log = structlog.get_logger("cellctl.mqtt")

STORE_FILE = "cellctl.db"
GOODBYE_TIMEOUT_S = 3.0
REPORT_INTERVAL_S = 60.0  # the retained shift report, refreshed
REPORT_WINDOW_S = 8 * 3600.0  # … covering at most this much
GOODBYE_DEVICES_S = 1.0
GOODBYE_DELIVERY_S = 1.5


class MqttService:
    def __init__(
        self,
        cell: Cell,
        bus: EventBus,
        supervisor: Supervisor,
        jobs: JobService | None = None,
        store: Store | None = None,
        encoding: Encoding | None = None,
        facts: CellFacts | None = None,
        plans: PlanFeed | None = None,
    ) -> None:
        assert cell.config.mqtt is not None
        self.cell = cell
        self.cfg: MqttSection = cell.config.mqtt
        self.bus = bus
        self.supervisor = supervisor
        self.jobs = jobs
        self.facts = facts
        self.plans = plans  # the live plan, retained on `plan` and `plan/problem`
        self.report: dict[str, Any] | None = None  # the last one published on `report`
        self._facts_wake = asyncio.Event()
        self._shared_store = store
        self.topics = Topics(cell.name, self.cfg.topic_prefix)
        self.encoding: Encoding = encoding or JsonEncoding(self.topics)
        self.boot = uuid.uuid4().hex[:12]
        # Subscribed now, before any device runs: the first state changes are not missed.
        self._sub = bus.subscribe("mqtt", lossless=True)
        self.ready = asyncio.Event()
        self.embedded_started = False
        self.access = Access.from_section(cell.config.access)
        # What the start check learnt of the broker; UNKNOWN: ask again once connected.
        self.anonymous = Anonymous.UNKNOWN
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

    async def preflight(self) -> None:
        """Before the cell starts: one anonymous CONNECT. A broker that accepts it lets
        anyone publish as any user, so the daemon refuses to start unless the config says
        `allow_anonymous = true`. Raises ConfigError (the CLI prints it, exit 2)."""
        cfg = self.cfg
        if cfg.embedded and not await listening(cfg.host, cfg.port):
            return  # our own broker, started with the config's rules (broker.py)
        self.anonymous, why = await probe_anonymous(self._settings())
        self._judge(why)

    def _judge(self, why: str) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        if self.access.allow_anonymous:
            log.warning(
                "[access] allow_anonymous = true: user names are claims, not identities; "
                "anyone who reaches the broker may send what everyone may",
                broker=where,
                broker_lets_anonymous_in=self.anonymous.value,
                everyone=sorted(self.access.everyone),
            )
        elif self.anonymous is Anonymous.UNKNOWN:
            log.warning("cannot check the broker for anonymous access yet", broker=where, why=why)
        elif self.anonymous is Anonymous.REFUSED:
            log.info("the broker refuses anonymous clients", broker=where)
        else:
            problem = (
                f"{self.cell.source}: access.allow_anonymous: the MQTT broker at {where} "
                "accepts clients without credentials, so anyone can publish as any user; "
                "configure the broker (password_file, allow_anonymous false, the ACL of "
                "docs/mqtt.md) or set [access] allow_anonymous = true"
            )
            log.error("refusing to start: the broker accepts anonymous clients", broker=where)
            raise ConfigError([problem])

    def _settings(self) -> LinkSettings:
        settings = LinkSettings.from_config(self.cfg, f"cellctl-{self.cell.name}")
        if self.embedded_started:
            settings = LinkSettings(**{**settings.__dict__, "mqtt5": False})
        return settings

    async def _recheck(self, link: MqttLink, commands: CommandHandler) -> None:
        """The start check could not reach the broker: ask once it is reachable. Commands
        wait meanwhile; an open broker found now leaves only what everyone may do."""
        while self.anonymous is Anonymous.UNKNOWN:
            await link.connected.wait()
            self.anonymous, _ = await probe_anonymous(self._settings())
            if self.anonymous is Anonymous.UNKNOWN:
                await asyncio.sleep(self.cfg.reconnect_max_s)
        if self.anonymous is Anonymous.ACCEPTED and not self.access.allow_anonymous:
            log.error(
                "the broker accepts anonymous clients: user names cannot be trusted; "
                "only what [access] gives everyone is allowed until the daemon restarts",
                everyone=sorted(self.access.everyone),
            )
            commands.access = self.access.unverified()
        else:
            self._judge("")
        commands.access_known.set()

    async def run(self) -> None:
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            mqtt5 = cfg.protocol == "5"
            if cfg.embedded:
                pw = cfg.embedded_password_file
                rules = BrokerAccess(
                    self.topics,
                    self.access,
                    cfg.username,
                    None if pw is None else self.cell.source.parent / pw,
                )
                self.embedded_started = await stack.enter_async_context(
                    embedded_broker(cfg.host, cfg.port, rules)
                )
                if self.embedded_started:  # ours: it lets anyone in exactly when told to
                    open_ = self.access.allow_anonymous
                    self.anonymous = Anonymous.ACCEPTED if open_ else Anonymous.REFUSED
                    self._judge("the embedded broker")
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
        subscriptions = [(self.topics.commands, 1)]
        if cfg.legacy_commands:
            subscriptions.append((self.topics.legacy_commands, 1))
        link = MqttLink(
            settings,
            will=enc.status(False, "connection lost", self.boot),
            subscriptions=subscriptions,
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
            device_ids=list(self.cell.devices),
        )
        spool, sender, publisher = pipe.spool, pipe.sender, pipe.publisher

        def reply(out: Outgoing, correlation: bytes | None) -> None:
            link.publish(out, link.reply_properties(correlation))

        commands = CommandHandler(
            self.topics,
            store,
            lambda: self.supervisor.runners,
            reply,
            self._audit,
            self.jobs,
            access=self.access,
            legacy=cfg.legacy_commands,
            limits=self.cell.config.commands,
            uploads=ProgramUploads(
                self.cell.state_dir / "programs",
                self.cell.state_dir / "uploads",
                self.cell.config.commands,
            ),
        )
        await commands.load()
        # With allow_anonymous nothing hangs on the answer: no check, no wait.
        recheck = self.anonymous is Anonymous.UNKNOWN and not self.access.allow_anonymous
        if recheck:
            commands.access_known.clear()

        def connected() -> None:
            link.publish(enc.status(True, "", self.boot))
            sender.connected()
            publisher.publish_spool_stats(force=True)
            publisher.republish()
            self._publish_plan(link)

        publisher.describe = self._metrics
        publisher.on_step_changed = self._facts_wake.set
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
                tg.create_task(publisher.snapshot_loop(), name="mqtt-snapshots")
                tg.create_task(publisher.heartbeats(), name="mqtt-heartbeats")
                tg.create_task(self._facts_loop(publisher), name="mqtt-facts")
                tg.create_task(self._plan_loop(link), name="mqtt-plan")
                tg.create_task(self._report_loop(link, store), name="mqtt-report")
                tg.create_task(commands.run(), name="mqtt-commands")
                if recheck:
                    tg.create_task(self._recheck(link, commands), name="mqtt-access-check")
                self.ready.set()
                try:
                    await asyncio.Event().wait()
                finally:
                    # Cancelled: say goodbye while the link still runs.
                    await self._goodbye(publisher, spool, link, sub)
        finally:
            self.bus.unsubscribe(sub)

    def _metrics(self, device_id: str) -> list[MetricSpec]:
        runner = self.supervisor.runners.get(device_id)
        driver = runner.driver if runner is not None else None
        if driver is None:
            return []
        try:
            return list(driver.metrics())
        except Exception as exc:  # a driver bug must not stop telemetry
            log.error("driver.metrics() raised", device=device_id, exc_info=exc)
            return []

    def _audit(self, rec: AuditRecord) -> None:
        assert self.publisher is not None
        self.publisher.audit(rec)
        if rec.command == "set_setup" and rec.outcome == "accepted":
            self._facts_wake.set()

    async def _facts_loop(self, publisher: Publisher) -> None:
        """Setups and held steps from the job service into the snapshot: at start, then
        after each step change and accepted set_setup."""
        if self.facts is None:
            await asyncio.Event().wait()
            return
        self._facts_wake.set()
        while True:
            await self._facts_wake.wait()
            self._facts_wake.clear()
            try:
                facts = await self.facts.facts()
            except Exception as exc:  # the snapshot lacks them until the next try
                log.error("cannot read setups and held steps for the snapshot", exc_info=exc)
                continue
            snaps = publisher.snapshots
            for dev, setup in facts.setups.items():
                publisher.snapshot_changed(snaps.set_setup(dev, setup))
            publisher.snapshot_changed(snaps.set_held(facts.held, facts.requests))

    async def _plan_loop(self, link: MqttLink) -> None:
        """Each plan the feed takes goes out retained (offline: the reconnect sends it)."""
        if self.plans is None:
            await asyncio.Event().wait()
            return
        while True:
            await self.plans.changed.wait()
            self.plans.changed.clear()
            self._publish_plan(link)

    async def _report_loop(self, link: MqttLink, store: Store) -> None:
        """The shift report since the daemon started (at most the last REPORT_WINDOW_S),
        retained on `report`, every REPORT_INTERVAL_S; only on a cell that plans (the
        report re-plans with FIFO, and the planning package is loaded only there). Built
        on a worker thread with a read-only connection of its own: the FIFO re-plan of a
        long shift must not hold the store's thread, which the job service writes on."""
        if self.plans is None or self.cell.config.scheduler.method != "planner":
            await asyncio.Event().wait()
            return
        from cellctl import shift_report

        started, cell, path = time.time(), self.cell, store.path
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            now = time.time()
            since = max(started, now - REPORT_WINDOW_S)
            try:
                report = await asyncio.to_thread(shift_report.build_from, path, cell, since, now)
            except sqlite3.Error as exc:  # the next round tries again
                log.error("cannot build the shift report", error=str(exc))
                continue
            self.report = report
            link.publish(Outgoing(self.topics.report, dumps(report), Kind.REPORT, 1, True))

    def _publish_plan(self, link: MqttLink) -> None:
        feed = self.plans
        if feed is None or feed.plan is None or feed.problem is None:
            return
        # The problem first: a reader that has the plan finds the problem it answers.
        topic = self.topics
        link.publish(Outgoing(topic.plan_problem, dumps(feed.problem), Kind.PLAN_PROBLEM, 1, True))
        link.publish(Outgoing(topic.plan, dumps(feed.plan), Kind.PLAN, 1, True))

    async def _goodbye(
        self, publisher: Publisher, spool: Spool, link: MqttLink, sub: Subscription
    ) -> None:
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                # The devices stop at the same time as we do: their last states (unavailable)
                # go out now, not from the spool at the next start.
                await self._devices_down(GOODBYE_DEVICES_S)
                publisher.drain(sub)
                publisher.publish_snapshots(time.monotonic())  # retained: devices unavailable
                await self._delivered(spool, link, GOODBYE_DELIVERY_S)
                await link.close(self.encoding.status(False, "shutdown", self.boot))
        except TimeoutError:
            log.warning("MQTT goodbye took too long; the will says offline instead")
        except Exception as exc:
            log.error("MQTT goodbye failed", exc_info=exc)

    async def _devices_down(self, within_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while any(
                    r.state != DeviceState.UNAVAILABLE for r in self.supervisor.runners.values()
                ):
                    await asyncio.sleep(0.02)

    @staticmethod
    async def _delivered(spool: Spool, link: MqttLink, within_s: float) -> None:
        """Commit, and while connected wait (bounded) until the broker acknowledged every
        spooled message and its row is deleted: a clean stop leaves nothing to re-send."""
        await spool.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while link.is_connected and spool.counters.depth:
                    await asyncio.sleep(0.02)
                    await spool.flush()
