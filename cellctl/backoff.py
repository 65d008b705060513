"""Exponential backoff with multiplicative jitter, capped: one policy for every reconnect loop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay lies within base × (1 ± jitter), never above max_s
    floor_s: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def base(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.multiplier**attempt)

    def next(self) -> float:
        base = self.base(self.attempt)
        # Once at the cap the count stops growing: days of failures never overflow the power.
        if base < self.max_s:
            self.attempt += 1
        spread = base * self.jitter
        return max(self.floor_s, min(self.max_s, base + self.rng.uniform(-spread, spread)))

    def exhaust(self) -> None:
        """Jump to the cap: used when retrying soon cannot help (wrong machine on the port)."""
        while self.base(self.attempt) < self.max_s:
            self.attempt += 1

    def reset(self) -> None:
        self.attempt = 0
