"""Durations learned from what the cell measured: changeovers and steps.

Pure: the job service records each measured duration here (a changeover from
its request to the operator's confirmation, or the automatic change; a step
from start to end) and asks for estimates when it builds a planning problem.

- A changeover's estimate, per device and from→to pair, is the trimmed mean
  of its last `window` measurements (the highest and lowest `trim` fraction
  dropped), so one forgotten confirmation or one lucky change does not move
  it far. With fewer than `min_samples` measurements the configured value is
  kept: two samples say little.
- A device's speed against the slicer's estimate is the median of actual ÷
  estimated over its last `window` steps: a printer that runs 8 % slower than
  its slicer says gets 1.08, and every estimate for it is scaled by that.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

Pair = tuple[str, str, str]  # (device, from setup, to setup)


def trimmed_mean(values: Iterable[float], trim: float) -> float:
    """The mean after dropping the `trim` fraction at each end (at least one value kept)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    k = min(int(len(xs) * trim), (len(xs) - 1) // 2)
    kept = xs[k : len(xs) - k]
    return sum(kept) / len(kept)


@dataclass(frozen=True)
class Estimate:
    value: float
    samples: int
    learned: bool  # False: the configured value (too few samples yet)


class Learned:
    """Recent measurements per changeover pair and per device; estimates from them."""

    def __init__(self, window: int = 20, trim: float = 0.2, min_samples: int = 3) -> None:
        if window < 1 or not 0 <= trim < 0.5 or min_samples < 1:
            raise ValueError("window ≥ 1, 0 ≤ trim < 0.5, min_samples ≥ 1")
        self.window, self.trim, self.min_samples = window, trim, min_samples
        self._changeovers: dict[Pair, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._speed: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def changeover_done(self, device: str, before: str, after: str, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self._changeovers[(device, before, after)].append(seconds)

    def step_done(self, device: str, estimated_s: float | None, actual_s: float) -> None:
        """A step ended normally; `estimated_s` is the slicer's (or the job's) estimate."""
        if estimated_s and estimated_s > 0 and math.isfinite(actual_s) and actual_s > 0:
            self._speed[device].append(actual_s / estimated_s)

    def changeover(self, device: str, before: str, after: str, configured: float) -> Estimate:
        xs = self._changeovers.get((device, before, after), ())
        if len(xs) < self.min_samples:
            return Estimate(configured, len(xs), False)
        return Estimate(trimmed_mean(xs, self.trim), len(xs), True)

    def speed(self, device: str) -> Estimate:
        """Actual ÷ estimated step time on this device (1.0 until enough steps ran)."""
        xs = self._speed.get(device, ())
        if len(xs) < self.min_samples:
            return Estimate(1.0, len(xs), False)
        return Estimate(statistics.median(xs), len(xs), True)

    def step(self, device: str, estimated_s: float) -> float:
        return estimated_s * self.speed(device).value

    def pairs(self) -> list[Pair]:
        return sorted(self._changeovers)

    def devices(self) -> list[str]:
        """Devices with step measurements (for their speed)."""
        return sorted(self._speed)
