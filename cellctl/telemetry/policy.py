"""Per-metric publishing policy: report by exception, deadband, minimum interval, heartbeat.

With `report_by_exception` (the default) a sample passes when its metric
moved by more than its deadband since the last *published* value (numbers),
changed at all (bool, string, or a deadband of 0), or changed quality (a
subscriber must learn that a value went stale); and its minimum interval has
elapsed since the last published sample. The first sample of a metric after
a device (re)connects always passes (`forget`). An unchanged metric is sent
again every `heartbeat_s` (`due`), its newest reading then, so that a
subscriber sees it is alive.

A metric's deadband is its policy's, else the default for its unit
(`UNIT_DEADBANDS`; units as the drivers declare them, `describe`), else 0.
With `report_by_exception = false` and no policy, every sample passes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cellctl.config import MetricPolicy, TelemetrySection
from cellctl.model import MetricSpec, MetricValue, Quality, Sample

# Default deadbands by unit: about what an operator would not call a change on a
# dashboard, and below what a process controller cares about.
UNIT_DEADBANDS: Mapping[str, float] = {
    "degC": 0.2,
    "°C": 0.2,
    "C": 0.2,
    "K": 0.2,
    "%": 0.5,
    "mm": 0.01,
    "deg": 0.05,
    "°": 0.05,
    "mm/s": 0.5,
    "mm/min": 5.0,
    "rpm": 5.0,
    "N": 0.5,
    "bar": 0.01,
    "V": 0.05,
    "A": 0.01,
    "W": 1.0,
    "s": 0.05,
}


@dataclass(slots=True)
class _Last:
    value: MetricValue
    quality: Quality
    sent_at: float  # when it was published (the sample's source time, or the heartbeat's)
    newest: Sample  # the newest sample read (published or not)


class SampleFilter:
    def __init__(self, section: TelemetrySection) -> None:
        self._section = section
        self._policies: dict[tuple[str, str], tuple[float, float]] = {}
        self._units: dict[tuple[str, str], str] = {}
        self._last: dict[tuple[str, str], _Last] = {}
        self.rbe = section.report_by_exception
        self.heartbeat_s = section.heartbeat_s if self.rbe else 0.0
        self.suppressed = 0
        # No policy at all: every sample passes, and the hot path can skip asking.
        self.trivial = not self.rbe and not section.metrics and section.default == MetricPolicy()

    def describe(self, device_id: str, specs: Sequence[MetricSpec]) -> None:
        """The device's declared metrics: their units pick the default deadbands."""
        for s in specs:
            key = (device_id, s.name)
            if self._units.get(key) != s.unit:
                self._units[key] = s.unit
                self._policies.pop(key, None)

    def forget(self, device_id: str) -> None:
        """The device went away: the first samples after it is back all pass."""
        for key in [k for k in self._last if k[0] == device_id]:
            del self._last[key]

    def policy(self, device_id: str, metric: str) -> tuple[float, float]:
        """(minimum interval, deadband) of the metric."""
        key = (device_id, metric)
        found = self._policies.get(key)
        if found is None:
            policy = self._section.default
            name = f"{device_id}/{metric}"
            for pattern, p in self._section.metrics.items():
                if fnmatch.fnmatchcase(name, pattern):
                    policy = p
                    break
            deadband = policy.deadband
            if deadband is None:
                deadband = UNIT_DEADBANDS.get(self._units.get(key, ""), 0.0) if self.rbe else -1.0
            found = self._policies[key] = (policy.min_interval_s, deadband)
        return found

    def admit(self, device_id: str, sample: Sample) -> bool:
        if self.trivial:
            return True
        key = (device_id, sample.name)
        min_interval, deadband = self.policy(device_id, sample.name)
        last = self._last.get(key)
        if last is not None:
            last.newest = sample
            if sample.quality == last.quality:
                if sample.timestamp - last.sent_at < min_interval:
                    self.suppressed += 1
                    return False
                # deadband < 0: no deadband at all (report_by_exception off, none set)
                if deadband >= 0 and not _moved(last.value, sample.value, deadband):
                    self.suppressed += 1
                    return False
        self._last[key] = _Last(sample.value, sample.quality, sample.timestamp, sample)
        return True

    def due(self, now: float) -> dict[str, list[Sample]]:
        """Per device, the newest reading of every metric not published for heartbeat_s
        (source time); they count as published from here on."""
        out: dict[str, list[Sample]] = {}
        if self.heartbeat_s <= 0:
            return out
        for (device_id, _), last in self._last.items():
            if now - last.sent_at >= self.heartbeat_s:
                # Its own source time: a heartbeat repeats a reading, it does not invent one.
                s = last.newest
                last.value, last.quality, last.sent_at = s.value, s.quality, now
                out.setdefault(device_id, []).append(s)
        return out


def _moved(old: MetricValue, new: MetricValue, deadband: float) -> bool:
    numeric = (int, float)
    if (
        deadband > 0
        and isinstance(old, numeric)
        and isinstance(new, numeric)
        and not isinstance(old, bool)
        and not isinstance(new, bool)
    ):
        return abs(float(new) - float(old)) > deadband
    return old != new
