"""Per-metric publishing policy: minimum interval and deadband, from `[telemetry]`.

A sample passes when its metric's minimum interval has elapsed since the last
published sample and its value moved by more than the deadband (numbers), or
changed at all (bool and string, when a deadband is set). A change of quality
always passes: a subscriber must learn that a value went stale.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from cellctl.config import MetricPolicy, TelemetrySection
from cellctl.model import MetricValue, Quality, Sample


@dataclass(slots=True)
class _Last:
    value: MetricValue
    timestamp: float
    quality: Quality


class SampleFilter:
    def __init__(self, section: TelemetrySection) -> None:
        self._section = section
        self._policies: dict[tuple[str, str], MetricPolicy] = {}
        self._last: dict[tuple[str, str], _Last] = {}
        self.suppressed = 0
        # No policy at all: every sample passes, and the hot path can skip asking.
        self.trivial = not section.metrics and section.default == MetricPolicy()

    def policy(self, device_id: str, metric: str) -> MetricPolicy:
        key = (device_id, metric)
        found = self._policies.get(key)
        if found is None:
            found = self._section.default
            name = f"{device_id}/{metric}"
            for pattern, policy in self._section.metrics.items():
                if fnmatch.fnmatchcase(name, pattern):
                    found = policy
                    break
            self._policies[key] = found
        return found

    def admit(self, device_id: str, sample: Sample) -> bool:
        if self.trivial:
            return True
        key = (device_id, sample.name)
        policy = self.policy(device_id, sample.name)
        last = self._last.get(key)
        if last is not None and sample.quality == last.quality:
            if sample.timestamp - last.timestamp < policy.min_interval_s:
                self.suppressed += 1
                return False
            if policy.deadband > 0 and not _moved(last.value, sample.value, policy.deadband):
                self.suppressed += 1
                return False
        self._last[key] = _Last(sample.value, sample.timestamp, sample.quality)
        return True


def _moved(old: MetricValue, new: MetricValue, deadband: float) -> bool:
    numeric = (int, float)
    if (
        isinstance(old, numeric)
        and isinstance(new, numeric)
        and not isinstance(old, bool)
        and not isinstance(new, bool)
    ):
        return abs(float(new) - float(old)) > deadband
    return old != new
