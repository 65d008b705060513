"""From the app's event bus to MQTT: policy, encoding, spool for events, direct for samples.

`Publisher.handle()` runs on the event loop for each event and never waits:
events get their sequence number and go to the spool (committed in groups,
sent with QoS 1 by cellctl/telemetry/sender.py); samples pass the per-metric
filter, are batched per device, and go straight to the link with QoS 0 (or through
the spool with QoS 1 when `samples_qos = 1`). When the broker is unreachable
QoS 0 samples are dropped and counted: they are measurements, and the next
one is coming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from cellctl.config import TelemetrySection
from cellctl.events import Subscription
from cellctl.model import (
    Alarm,
    Event,
    JobChanged,
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
from cellctl.telemetry.spool import Spool

log = structlog.get_logger("cellctl.mqtt.publisher")

PROGRESS_MIN_INTERVAL_S = 0.5
SPOOL_STATS_INTERVAL_S = 1.0


class Publisher:
    def __init__(
        self,
        encoding: Encoding,
        spool: Spool,
        link: MqttLink,
        telemetry: TelemetrySection,
        samples_qos: int = 0,
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

    # --- intake (never waits) --------------------------------------------

    def handle(self, ev: Event) -> None:
        enc = self.encoding
        if isinstance(ev, Samples):
            self._samples(ev)
        elif isinstance(ev, StateChanged):
            seq = self.spool.next_seq(ev.device_id)
            self._event(enc.state(ev, seq), ev.device_id, seq)
        elif isinstance(ev, Alarm):
            seq = self.spool.next_seq(ev.device_id)
            self._event(enc.alarm(ev, seq), ev.device_id, seq)
        elif isinstance(ev, OperatorRequest):
            seq = self.spool.next_seq(ev.device_id)
            self._event(enc.request(ev, seq), ev.device_id, seq)
        elif isinstance(ev, StepProgress):
            self._progress(ev)
        elif isinstance(ev, JobChanged):
            self.job_event(JobEvent(ev.job_id, "job", ev.state.value, None, None, ev.reason))
        elif isinstance(ev, StepChanged):
            self.job_event(
                JobEvent(ev.job_id, "step", ev.state.value, ev.index, ev.device_id, ev.reason)
            )

    def job_event(self, ev: JobEvent) -> None:
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
        if not admitted:
            return
        if self.batch_s <= 0:
            self._send_samples(ev.device_id, admitted)
            return
        batch = self._batches.setdefault(ev.device_id, [])
        batch.extend(admitted)
        if len(batch) >= self.batch_max:
            self._flush_device(ev.device_id)

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
