"""The driver's picture of the robot: latest sample per tag, and the PackML state
derived from them. Lives on the daemon's loop only; fed in batches from the
client thread (`tagmap.Coalescer`) and by fresh reads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from cellctl.driver import EventSink
from cellctl.model import (
    Alarm,
    DeviceState,
    MetricValue,
    Quality,
    Sample,
    Samples,
    StateChanged,
)

from .options import StateSpec


class TagCache:
    def __init__(
        self,
        device_id: str,
        emit: Callable[[], EventSink],
        spec: StateSpec | None,
        metric_tags: Iterable[str],
        connected: Callable[[], bool],
    ) -> None:
        self.device_id = device_id
        # Looked up at each event: tests swap the driver's context after construction.
        self._emit = emit
        self.spec = spec
        self.metric_tags = frozenset(metric_tags)
        self._connected = connected
        self.values: dict[str, Sample] = {}
        self.state = DeviceState.UNAVAILABLE
        self.detail = ""
        self._alarm = ""
        self._changed = asyncio.Event()

    def value(self, tag: str) -> MetricValue | None:
        s = self.values.get(tag)
        return None if s is None else s.value

    # --- values in -------------------------------------------------------------

    def store(self, samples: Iterable[Sample]) -> list[Sample]:
        """Update the cache; drop samples older than what is known (replays)."""
        kept = []
        for s in samples:
            old = self.values.get(s.name)
            if old is not None and s.timestamp < old.timestamp and old.quality == Quality.GOOD:
                continue
            self.values[s.name] = s
            kept.append(s)
        if kept:
            self.derive_state()
        return kept

    def publish(self, samples: Iterable[Sample]) -> None:
        """Store, emit what was kept as one Samples event, wake the waiters."""
        kept = self.store(samples)
        if kept:
            self._emit()(Samples(self.device_id, tuple(kept)))
        self.notify()

    def mark_stale(self, reason: str) -> None:
        """Link down: the last values are published once more, as BAD, and nothing good."""
        now = time.time()
        stale = tuple(
            Sample(s.name, s.value, now, Quality.BAD)
            for s in self.values.values()
            if s.name in self.metric_tags
        )
        for s in stale:
            self.values[s.name] = s
        if stale:
            self._emit()(Samples(self.device_id, stale))
        self.set_state(DeviceState.UNAVAILABLE, f"reconnecting: {reason}")

    # --- waiting for a change ------------------------------------------------------

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, within: float) -> None:
        """Return on the next change, or after `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._changed.wait()

    # --- PackML state ------------------------------------------------------------------

    def derive_state(self) -> None:
        spec = self.spec
        connected = self._connected()
        if spec is None or not connected:
            if connected and self.state == DeviceState.UNAVAILABLE:
                self.set_state(DeviceState.IDLE, "connected")
            return
        sample = self.values.get(spec.tag)
        if sample is None or sample.quality == Quality.BAD:
            self.set_state(DeviceState.STOPPED, "robot state unknown (bad quality)")
            return
        raw = str(sample.value)
        state = spec.values.get(raw)
        if state is None:
            self.set_state(DeviceState.STOPPED, f"unmapped robot state {raw!r}")
        else:
            self.set_state(state, raw)
        if spec.alarm_tag:
            alarm = self.values.get(spec.alarm_tag)
            text = str(alarm.value) if alarm is not None else ""
            if text != self._alarm:
                if text:
                    self._emit()(Alarm(self.device_id, "robot", text, True))
                elif self._alarm:
                    self._emit()(Alarm(self.device_id, "robot", self._alarm, False))
                self._alarm = text
            self.detail = f"{raw}: {text}" if text else raw

    def set_state(self, state: DeviceState, reason: str) -> None:
        self.detail = reason
        if state != self.state:
            previous, self.state = self.state, state
            self._emit()(StateChanged(self.device_id, state, previous, reason))
