"""The Sparkplug B edge node: a second MQTT connection beside the JSON namespace.

A connection has one will, and the JSON connection's will is its retained `status`;
Sparkplug's will is the NDEATH, so this is a client of its own (`<client id>-spb`).
It reads the same event bus as the JSON publisher and turns events into births and
report-by-exception DATA (cellctl.telemetry.sparkplug.session holds the rules).

- On CONNECT: the will carries the next bdSeq (BdSeqStore, kept across restarts).
  NCMD/DCMD (and the primary host's STATE) are subscribed before NBIRTH.
- Births: NBIRTH, then a DBIRTH per connected device, then whatever was kept while
  not born, as historical DATA in order. With a primary host configured, births
  wait for its STATE `online: true` (3.0, edge-node-birth-publish-phid-wait*).
- A STATE `online: false` not older than the last online one: NDEATH, DISCONNECT,
  connect again (new bdSeq) and wait for the host (…-termination-host-offline*).
- A device that connects gets a DBIRTH; one whose link is lost a DDEATH
  (operational-behavior-device-ddeath).
- NCMD `Node Control/Rebirth` = true: a new NBIRTH (same bdSeq, seq 0) and DBIRTHs.
  DCMD `Device Control/Pause|Resume|Stop|Reset` = true: the JSON command of that name,
  run by the command handler as `command_user` (its [access] role decides; the reply
  goes to that user's JSON reply topic). Who may publish DCMD is the broker's ACL.
- Clean stop: NDEATH (QoS 1, acknowledged) then DISCONNECT, so the will is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from cellctl.commands import CommandHandler
from cellctl.config import Cell
from cellctl.events import EventBus
from cellctl.model import (
    Alarm,
    DeviceState,
    Event,
    JobChanged,
    JobState,
    Samples,
    StateChanged,
    StepChanged,
    StepProgress,
    StepState,
)
from cellctl.store import Store
from cellctl.supervisor import DeviceRunner, Supervisor
from cellctl.tasks import TaskGroup
from cellctl.telemetry.encoding import Outgoing
from cellctl.telemetry.link import Incoming, LinkSettings, MqttLink
from cellctl.telemetry.pahoclient import BufferedClient
from cellctl.telemetry.policy import SampleFilter
from cellctl.telemetry.sparkplug import catalog as cat
from cellctl.telemetry.sparkplug import writes
from cellctl.telemetry.sparkplug.bdseq import BdSeqStore
from cellctl.telemetry.sparkplug.history import HistoryStore
from cellctl.telemetry.sparkplug.payload import Payload, to_ms
from cellctl.telemetry.sparkplug.session import Change, EdgeNode
from cellctl.telemetry.sparkplug.settings import SparkplugSection
from cellctl.telemetry.topics import Topics

log = structlog.get_logger("cellctl.sparkplug")

GOODBYE_TIMEOUT_S = 3.0
_ACTIVE_STEP = frozenset({StepState.STARTING, StepState.RUNNING, StepState.HELD})


class SparkplugLink(MqttLink):
    """An MqttLink whose will is made anew for every CONNECT (the next bdSeq)."""

    def __init__(self, settings: LinkSettings, make_will: Callable[[], Outgoing], **kw: Any):
        super().__init__(settings, **kw)
        self._make_will = make_will

    def _make_client(self) -> BufferedClient:
        self.will = self._make_will()
        return super()._make_client()


class SparkplugService:
    def __init__(
        self,
        cell: Cell,
        bus: EventBus,
        supervisor: Supervisor,
        commands: Callable[[], CommandHandler | None] = lambda: None,
        spool_depth: Callable[[], int] = lambda: 0,
        after: asyncio.Event | None = None,
        open_jobs: Callable[[], Awaitable[Iterable[tuple[str, JobState]]]] | None = None,
        store: Store | None = None,
    ) -> None:
        mqtt = cell.config.mqtt
        assert mqtt is not None and mqtt.sparkplug is not None
        self.cell = cell
        self.mqtt_cfg = mqtt
        self.cfg: SparkplugSection = mqtt.sparkplug
        self.supervisor = supervisor
        self._commands = commands
        self._spool_depth = spool_depth
        # Set when the JSON side is up (and with it an embedded broker): connect after it.
        self._after = after
        # The jobs open at start (later, job events keep the count).
        self._load_open_jobs = open_jobs
        self.topics = Topics(cell.name, mqtt.topic_prefix)
        self.node = EdgeNode(
            self.cfg.group_id, self.cfg.edge_node_id or cell.name, self.cfg.history_max
        )
        self.bdseq = BdSeqStore(cell.state_dir)
        self.writer = writes.TagWriter(
            self.cfg.write_tags, self.cfg.command_user, commands, self._spawn
        )
        # The kept changes on disk too (a restart while the host is away loses nothing).
        self.history = (
            HistoryStore(store, self.cfg.history_max)
            if store is not None and self.cfg.history_max > 0
            else None
        )
        self.filter = SampleFilter(cell.config.telemetry)
        self._sub = bus.subscribe("sparkplug", lossless=True)
        self._bus = bus
        host = self.cfg.primary_host_id
        self.host_topic = None if host is None else f"spBv1.0/STATE/{host}"
        self.host_online = self.host_topic is None
        self.host_ts: int | None = None
        self._open_jobs: dict[str, JobState] = {}
        self._tg: TaskGroup | None = None
        self._leaving = False
        self.link: SparkplugLink | None = None
        self.ready = asyncio.Event()
        self.commands_sent = 0

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        if self._after is not None:
            await self._after.wait()
        if self.history is not None:
            self.node.restore(await self.history.load())
        cfg = self.mqtt_cfg
        client_id = self.cfg.client_id or f"{cfg.client_id or f'cellctl-{self.cell.name}'}-spb"
        settings = LinkSettings.from_config(cfg, client_id)
        # The embedded broker (amqtt) speaks 3.1.1 only; Sparkplug needs nothing of MQTT 5.
        mqtt5 = cfg.protocol == "5" and not cfg.embedded
        settings = LinkSettings(**{**settings.__dict__, "client_id": client_id, "mqtt5": mqtt5})
        subs = [(t, 1) for t in self.node.command_topics]
        if self.host_topic is not None:
            subs.append((self.host_topic, 1))
        link = SparkplugLink(
            settings,
            lambda: self.node.will(self.bdseq.next()),
            subscriptions=subs,
            on_message=self._on_message,
            on_connected=self._connected,
            on_disconnected=self.node.lost,
        )
        self.link = link
        try:
            async with TaskGroup() as tg:
                self._tg = tg
                tg.create_task(link.run(), name="sparkplug-link")
                tg.create_task(self._consume(), name="sparkplug-events")
                tg.create_task(self._poll_node(), name="sparkplug-node")
                if self.history is not None:
                    tg.create_task(self.history.run(), name="sparkplug-history")
                if self._load_open_jobs is not None:
                    tg.create_task(self._initial_jobs(self._load_open_jobs), name="sparkplug-jobs")
                self.ready.set()
                try:
                    await asyncio.Event().wait()
                finally:
                    await self._goodbye(link)
        finally:
            self._bus.unsubscribe(self._sub)

    async def _initial_jobs(
        self, load: Callable[[], Awaitable[Iterable[tuple[str, JobState]]]]
    ) -> None:
        """The job service answers once it has loaded the store: the count waits, not the link."""
        for job_id, state in await load():
            self._open_jobs.setdefault(job_id, state)  # an event since then knows better

    async def _goodbye(self, link: MqttLink) -> None:
        """NDEATH before DISCONNECT (3.0, edge-node-intentional-disconnect-ndeath)."""
        self._leaving = True
        if not link.is_connected:
            return
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await link.close(self.node.ndeath())
        except TimeoutError:
            log.warning("Sparkplug goodbye took too long; the will (NDEATH) follows")

    def _publish(self, out: Outgoing | None) -> None:
        if out is not None and self.link is not None:
            self.link.publish(out)

    # --- sessions ---------------------------------------------------------------------

    def _connected(self) -> None:
        self.node.lost()
        if self.host_topic is not None:
            self.host_online = False  # until its (retained) STATE says otherwise
        log.info("Sparkplug connected", bdseq=self.node.bdseq, edge_node=self.node.edge_node_id)
        if self.host_online:
            self._births()

    def _births(self) -> None:
        """NBIRTH, every connected device's DBIRTH, then what was kept, historical."""
        if self._leaving or self.link is None or not self.link.is_connected:
            return
        self._publish(self.node.nbirth(self._node_values()))
        for dev_id, runner in self.supervisor.runners.items():
            self._device_birth(dev_id, runner)
        kept = bool(self.node.history)
        for out in self.node.forward():
            self._publish(out)
        if kept and self.history is not None:
            self.history.forwarded()

    def _device_birth(self, dev_id: str, runner: DeviceRunner) -> None:
        driver = runner.driver
        if driver is None or runner.state == DeviceState.UNAVAILABLE:
            return
        status = driver.status()
        self.node.define(dev_id, cat.device_metrics(driver.metrics(), status.setup))
        now = to_ms(time.time())
        changes = [
            Change(cat.STATE, int(runner.state), now),
            Change(cat.STATE_NAME, runner.state.label, now),
            *(Change(cat.SETUP_PREFIX + k, v, now) for k, v in status.setup.items()),
        ]
        self.node.update(dev_id, changes)
        if self.node.born:
            self._publish(self.node.dbirth(dev_id))

    def _node_values(self) -> dict[str, Any]:
        runners = self.supervisor.runners.values()
        return {
            cat.OPEN_JOBS: len(self._open_jobs),
            cat.QUEUED_JOBS: sum(1 for s in self._open_jobs.values() if s == JobState.QUEUED),
            cat.SPOOL_DEPTH: self._spool_depth(),
            cat.DEVICES_ONLINE: sum(1 for r in runners if r.state != DeviceState.UNAVAILABLE),
        }

    async def _poll_node(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.node_poll_s)
            now = to_ms(time.time())
            self._changes(None, [Change(k, v, now) for k, v in self._node_values().items()])

    # --- events -------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for ev in self._sub:
            try:
                self._event(ev)
            except Exception as exc:  # a bug here must not end the JSON side or the cell
                log.error("Sparkplug could not handle an event", event=repr(ev), exc_info=exc)

    def _event(self, ev: Event) -> None:
        if isinstance(ev, Samples):
            changes = [
                Change(s.name, s.value, to_ms(s.timestamp), s.quality)
                for s in ev.samples
                if self.filter.admit(ev.device_id, s)
            ]
            self._changes(ev.device_id, changes)
        elif isinstance(ev, StateChanged):
            self._state(ev)
        elif isinstance(ev, StepProgress):
            ts = to_ms(ev.timestamp)
            changes = [Change(cat.STEP, ev.step_key, ts)]
            if ev.progress.fraction is not None:
                changes.append(Change(cat.PROGRESS, round(ev.progress.fraction, 4), ts))
            self._changes(ev.device_id, changes)
        elif isinstance(ev, StepChanged) and ev.device_id is not None:
            ts = to_ms(ev.timestamp)
            if ev.state in _ACTIVE_STEP:
                self._changes(ev.device_id, [Change(cat.STEP, ev.step_key, ts)])
            elif ev.state.terminal:
                idle = [Change(cat.STEP, "", ts), Change(cat.PROGRESS, 0.0, ts)]
                self._changes(ev.device_id, idle)
        elif isinstance(ev, Alarm):
            ts = to_ms(ev.timestamp)
            self._changes(
                ev.device_id,
                [
                    Change(cat.ALARM_CODE, ev.code, ts),
                    Change(cat.ALARM_TEXT, ev.text, ts),
                    Change(cat.ALARM_ACTIVE, ev.active, ts),
                ],
            )
        elif isinstance(ev, JobChanged):
            if ev.state.terminal:
                self._open_jobs.pop(ev.job_id, None)
            else:
                self._open_jobs[ev.job_id] = ev.state

    def _state(self, ev: StateChanged) -> None:
        dev = ev.device_id
        if ev.state == DeviceState.UNAVAILABLE:
            self._publish(self.node.ddeath(dev) if self.node.born else None)
            return
        runner = self.supervisor.runners.get(dev)
        if ev.previous == DeviceState.UNAVAILABLE:
            if runner is not None:
                self._device_birth(dev, runner)
            return
        ts = to_ms(ev.timestamp)
        changes = [Change(cat.STATE, int(ev.state), ts), Change(cat.STATE_NAME, ev.state.label, ts)]
        driver = runner.driver if runner is not None else None
        if driver is not None and runner is not None:
            setup = driver.status().setup
            owner = self.node.devices.get(dev)
            known = {n for n in owner.defs if n.startswith(cat.SETUP_PREFIX)} if owner else set()
            if {cat.SETUP_PREFIX + k for k in setup} - known:
                # A setup key its birth did not name: a new DBIRTH names it (and the state).
                self._device_birth(dev, runner)
                return
            changes += [Change(cat.SETUP_PREFIX + k, v, ts) for k, v in setup.items()]
        self._changes(dev, changes)

    def _changes(self, device: str | None, changes: list[Change]) -> None:
        if device is not None and device not in self.node.devices:
            return  # not connected yet: its DBIRTH will carry the values
        changed = self.node.update(device, changes)
        if not changed:
            return
        connected = self.link is not None and self.link.is_connected
        born = self.node.born and (device is None or self.node.device_born(device))
        if connected and born:
            self._publish(self.node.data(device, changed))
        elif not self.node.born:
            entry = self.node.keep(device, changed)
            if entry is not None and self.history is not None:
                self.history.added(entry)

    # --- commands and the primary host ----------------------------------------------------

    def _on_message(self, msg: Incoming) -> None:
        if self.host_topic is not None and msg.topic == self.host_topic:
            self._host_state(msg.payload)
            return
        try:
            payload = Payload.FromString(msg.payload)
        except DecodeError:
            log.warning("Sparkplug command is not a Sparkplug B payload; ignored", topic=msg.topic)
            return
        if msg.topic == self.node.topic("NCMD"):
            self._ncmd(payload)
            return
        prefix = self.node.topic("DCMD") + "/"
        if msg.topic.startswith(prefix):
            self._dcmd(msg.topic[len(prefix) :], payload)

    def _metric_name(self, device: str | None, m: Payload.Metric) -> str | None:
        if m.HasField("name"):
            return m.name
        if m.HasField("alias"):
            return self.node.name_of(device, m.alias)
        return None

    def _ncmd(self, payload: Payload) -> None:
        for m in payload.metrics:
            name = self._metric_name(None, m)
            if name == cat.REBIRTH and m.WhichOneof("value") == "boolean_value" and m.boolean_value:
                log.info("Sparkplug rebirth requested")
                if self.host_online:
                    self._births()
            else:
                log.warning("Sparkplug NCMD metric not understood; ignored", metric=name)

    def _dcmd(self, device: str, payload: Payload) -> None:
        for m in payload.metrics:
            name = self._metric_name(device, m)
            command = cat.CONTROLS.get(name or "")
            if command is None and name is not None:
                self._write(device, name, m)
                continue
            if command is None or m.WhichOneof("value") != "boolean_value":
                log.warning(
                    "Sparkplug DCMD metric not understood; ignored", device=device, metric=name
                )
                continue
            if not m.boolean_value:
                continue
            handler = self._commands()
            if handler is None:
                log.warning(
                    "Sparkplug DCMD before the command handler is up; ignored",
                    device=device,
                    metric=name,
                )
                continue
            self.commands_sent += 1
            body = {"v": 1, "id": f"spb-{self.commands_sent}", "device": device}
            handler.on_message(
                Incoming(
                    topic=self.topics.command(self.cfg.command_user, command),
                    payload=json.dumps(body).encode(),
                    user_properties=(("via", "sparkplug"),),
                )
            )

    def _write(self, device: str, name: str, m: Payload.Metric) -> None:
        owner = self.node.devices.get(device)
        runner = self.supervisor.runners.get(device)
        self.writer.request(
            device,
            name,
            m,
            owner.defs.get(name) if owner is not None else None,
            runner.driver if runner is not None else None,
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:
            work.close()
            return
        self._tg.create_task(work, name="sparkplug-write")

    def _host_state(self, raw: bytes) -> None:
        """3.0 STATE: JSON {"online": bool, "timestamp": ms}; older timestamps are ignored."""
        try:
            data = json.loads(raw)
            online, ts = data["online"], data["timestamp"]
            if not isinstance(online, bool) or not isinstance(ts, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("primary host STATE is not {online, timestamp}; ignored")
            return
        if online:
            if self.host_ts is not None and ts < self.host_ts:
                return
            self.host_ts = ts
            if not self.host_online:
                log.info("primary host online", host=self.cfg.primary_host_id)
                self.host_online = True
                if not self.node.born:
                    self._births()
            return
        if self.host_ts is not None and ts < self.host_ts:
            return  # an old session's death (…-termination-host-offline-timestamp)
        was_online, self.host_online = self.host_online, False
        if was_online:
            log.warning(
                "primary host offline: NDEATH, reconnect, wait for it",
                host=self.cfg.primary_host_id,
            )
        if self.node.born and self._tg is not None and self.link is not None:
            self._tg.create_task(self._leave_for_host(self.link), name="sparkplug-host-offline")

    async def _leave_for_host(self, link: MqttLink) -> None:
        """NDEATH and DISCONNECT; the link connects again by itself (a new bdSeq)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await link.close(self.node.ndeath())
