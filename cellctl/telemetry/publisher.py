"""From the app's event bus to MQTT: policy, encoding, spool for events, direct for samples.

`Publisher.handle()` runs on the event loop for each event and never waits:
events get their sequence number and go to the spool (committed in groups,
sent with QoS 1 by cellctl/telemetry/sender.py); samples pass the per-metric
filter, are batched per device, and go straight to the link with QoS 0 (or through
the spool with QoS 1 when `samples_qos = 1`). When the broker is unreachable
QoS 0 samples are dropped and counted: they are measurements, and the next
one is coming.

It also keeps the cell's snapshot (cellctl/telemetry/snapshot.py) and publishes
it retained: a device's snapshot when its state, step, requests, alarms or
setup change (within SNAPSHOT_COALESCE_S), when only its metrics changed at
most every SNAPSHOT_METRICS_S (samples carry the changes meanwhile), and every
snapshot again on each (re)connect of the link (`republish`). Snapshots are
not spooled: only the newest counts, and a reconnect sends it anyway.

Sequence numbers count per stream (`seq_source`): a device's state, its
alarms, its requests, the job events, the audit. A subscriber of one such
topic (or of `jobs/+/events`) sees every number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from cellctl.config import TelemetrySection
from cellctl.events import Subscription
from cellctl.model import (
    Alarm,
    DeviceState,
    Event,
    JobChanged,
    MetricSpec,
    OperatorRequest,
    Sample,
    Samples,
    StateChanged,
    StepChanged,
    StepProgress,
)
from cellctl.telemetry.encoding import (
    AuditRecord,
    Encoding,
    JobEvent,
    Outgoing,
    SpoolStats,
)
from cellctl.telemetry.link import MqttLink
from cellctl.telemetry.policy import SampleFilter
from cellctl.telemetry.snapshot import Changed, Snapshots
from cellctl.telemetry.spool import Spool

log = structlog.get_logger("cellctl.mqtt.publisher")

PROGRESS_MIN_INTERVAL_S = 0.5
SPOOL_STATS_INTERVAL_S = 1.0
SNAPSHOT_COALESCE_S = 0.05
SNAPSHOT_METRICS_S = 5.0


def seq_source(device_id: str, stream: str) -> str:
    """The key `seq` counts under for a device's stream ("state", "alarms", "requests")."""
    return f"{device_id}/{stream}"


def _no_metrics(device_id: str) -> Sequence[MetricSpec]:
    return ()


class Publisher:
    def __init__(
        self,
        encoding: Encoding,
        spool: Spool,
        link: MqttLink,
        telemetry: TelemetrySection,
        samples_qos: int = 0,
        device_ids: Sequence[str] = (),
    ) -> None:
        self.encoding = encoding
        self.spool = spool
        self.link = link
        self.samples_qos = samples_qos
        self.filter = SampleFilter(telemetry)
        self.batch_s = telemetry.batch_s
        self.batch_max = telemetry.batch_max
        self._batches: dict[str, list[Sample]] = {}
        self._progress_at: dict[str, float] = {}
        self.samples_sent = 0
        self.events = 0
        self._stats_sent: tuple[int, int, int, int] | None = None
        self.snapshots = Snapshots(device_ids)
        # What a device's driver declares, asked when it connects (the service wires it).
        self.describe: Callable[[str], Sequence[MetricSpec]] = _no_metrics
        # Called after a step change (the job service may have changed a setup).
        self.on_step_changed: Callable[[], None] = lambda: None
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()
        self._cell_dirty = False
        self._snap_at: dict[str, float] = {}
        self._snap_wake = asyncio.Event()
        self.snapshots_sent = 0

    # --- intake (never waits) --------------------------------------------

    def handle(self, ev: Event) -> None:
        enc = self.encoding
        if isinstance(ev, Samples):
            self._samples(ev)
            return
        if isinstance(ev, StateChanged):
            self._device_state(ev)
            seq = self.spool.next_seq(seq_source(ev.device_id, "state"))
            self._event(enc.state(ev, seq), seq_source(ev.device_id, "state"), seq)
        elif isinstance(ev, Alarm):
            seq = self.spool.next_seq(seq_source(ev.device_id, "alarms"))
            self._event(enc.alarm(ev, seq), seq_source(ev.device_id, "alarms"), seq)
        elif isinstance(ev, OperatorRequest):
            seq = self.spool.next_seq(seq_source(ev.device_id, "requests"))
            self._event(enc.request(ev, seq), seq_source(ev.device_id, "requests"), seq)
        elif isinstance(ev, StepProgress):
            self._progress(ev)
        elif isinstance(ev, JobChanged):
            self.job_event(JobEvent(ev.job_id, "job", ev.state.value, None, None, ev.reason))
        elif isinstance(ev, StepChanged):
            self.job_event(
                JobEvent(ev.job_id, "step", ev.state.value, ev.index, ev.device_id, ev.reason)
            )
            self.on_step_changed()
        self.snapshot_changed(self.snapshots.apply(ev), urgent=not isinstance(ev, StepProgress))

    def _device_state(self, ev: StateChanged) -> None:
        if ev.state == DeviceState.UNAVAILABLE:
            self.filter.forget(ev.device_id)
        elif ev.previous == DeviceState.UNAVAILABLE:
            # Connected: the driver's declared metrics are complete now.
            specs = self.describe(ev.device_id)
            self.filter.describe(ev.device_id, specs)
            self.snapshot_changed(self.snapshots.describe(ev.device_id, specs))

    # --- the retained snapshot ---------------------------------------------

    def snapshot_changed(self, changed: Changed, urgent: bool = True) -> None:
        if not changed:
            return
        self._dirty |= changed.devices
        if urgent:
            self._urgent |= changed.devices
        self._cell_dirty |= changed.cell
        self._snap_wake.set()

    def republish(self) -> None:
        """The link (re)connected: every snapshot again (the broker may have lost them)."""
        self.snapshot_changed(Changed(set(self.snapshots.devices()), cell=True), urgent=True)

    async def snapshot_loop(self) -> None:
        wait: float | None = None
        while True:
            try:
                async with asyncio.timeout(wait):
                    await self._snap_wake.wait()
                await asyncio.sleep(SNAPSHOT_COALESCE_S)  # a burst of events: one snapshot
            except TimeoutError:
                pass
            self._snap_wake.clear()
            try:
                wait = self.publish_snapshots(time.monotonic())
            except Exception as exc:  # a bug here must not end the cell's telemetry
                log.error("publishing a snapshot failed", exc_info=exc)
                wait = SNAPSHOT_METRICS_S

    def publish_snapshots(self, now: float) -> float | None:
        """Publish what is due; returns how long until the next metrics-only one is."""
        if not self.link.is_connected:
            return None  # the reconnect republishes everything
        enc = self.encoding
        nxt: float | None = None
        for dev in sorted(self._dirty):
            left = self._snap_at.get(dev, -1e9) + SNAPSHOT_METRICS_S - now
            if dev not in self._urgent and left > 0:
                nxt = left if nxt is None else min(nxt, left)
                continue
            if self.link.publish(enc.device_snapshot(self.snapshots.device(dev))) is None:
                return None
            self.snapshots_sent += 1
            self._snap_at[dev] = now
            self._dirty.discard(dev)
            self._urgent.discard(dev)
        if self._cell_dirty:
            if self.link.publish(enc.cell(self.snapshots.cell())) is not None:
                self._cell_dirty = False
        return nxt

    def heartbeat(self, now: float) -> None:
        """Unchanged metrics not sent for heartbeat_s go out again (newest reading)."""
        for device_id, samples in self.filter.due(now).items():
            self._admitted(device_id, samples)

    def job_event(self, ev: JobEvent) -> None:
        # One stream for every job: a subscriber of jobs/+/events sees every number.
        seq = self.spool.next_seq("jobs")
        self._event(self.encoding.job(ev, seq), "jobs", seq)

    def audit(self, rec: AuditRecord) -> None:
        seq = self.spool.next_seq("audit")
        self._event(self.encoding.audit(rec, seq), "audit", seq)

    def _event(self, out: Outgoing, source: str, seq: int) -> None:
        self.events += 1
        self.spool.add(out, source, seq)

    def _samples(self, ev: Samples) -> None:
        admitted: Sequence[Sample]
        if self.filter.trivial:
            admitted = ev.samples
        else:
            admitted = [s for s in ev.samples if self.filter.admit(ev.device_id, s)]
        if admitted:
            self._admitted(ev.device_id, admitted)

    def _admitted(self, device_id: str, admitted: Sequence[Sample]) -> None:
        self.snapshot_changed(self.snapshots.reported(device_id, admitted), urgent=False)
        if self.batch_s <= 0:
            self._send_samples(device_id, admitted)
            return
        batch = self._batches.setdefault(device_id, [])
        batch.extend(admitted)
        if len(batch) >= self.batch_max:
            self._flush_device(device_id)

    def _flush_device(self, device_id: str) -> None:
        batch = self._batches.pop(device_id, None)
        if batch:
            self._send_samples(device_id, batch)

    def _send_samples(self, device_id: str, samples: Sequence[Sample]) -> None:
        step = self.batch_max
        chunks = (
            (samples,)
            if len(samples) <= step
            else (samples[i : i + step] for i in range(0, len(samples), step))
        )
        for chunk in chunks:
            out = self.encoding.samples(device_id, chunk, self.samples_qos)
            if self.samples_qos > 0:
                self.spool.add(out)
            elif self.link.publish(out) is None:
                self.spool.dropped_offline(len(chunk))
            else:
                self.samples_sent += 1

    def _progress(self, ev: StepProgress) -> None:
        now = time.monotonic()
        if now - self._progress_at.get(ev.device_id, -1e9) < PROGRESS_MIN_INTERVAL_S:
            return
        self._progress_at[ev.device_id] = now
        self.link.publish(self.encoding.progress(ev))

    # --- loops -------------------------------------------------------------

    async def consume(self, sub: Subscription) -> None:
        queue = sub.queue
        while True:
            self.handle(await queue.get())
            # Take whatever else is queued in the same turn: one wake-up, many events.
            while not queue.empty():
                self.handle(queue.get_nowait())

    def drain(self, sub: Subscription) -> None:
        while not sub.queue.empty():
            self.handle(sub.queue.get_nowait())

    async def batcher(self) -> None:
        if self.batch_s <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.batch_s)
            for device_id in list(self._batches):
                self._flush_device(device_id)

    async def heartbeats(self) -> None:
        beat = self.filter.heartbeat_s
        if beat <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(max(0.05, beat / 4))
            self.heartbeat(time.time())

    async def spool_stats(self) -> None:
        while True:
            await asyncio.sleep(SPOOL_STATS_INTERVAL_S)
            self.publish_spool_stats()

    def publish_spool_stats(self, force: bool = False) -> None:
        c = self.spool.counters
        now = (c.depth, c.dropped_samples, c.dropped_offline, c.dropped_disk_full)
        if (now != self._stats_sent or force) and self.link.is_connected:
            if self.link.publish(self.encoding.spool(SpoolStats(*now))) is not None:
                self._stats_sent = now
