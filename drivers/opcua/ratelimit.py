"""A token bucket for writes: an unthrottled writer starves the event loop."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """At most `rate` acquisitions per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        self._lock = asyncio.Lock()
        self.waited = 0  # how many acquisitions had to wait (for tests and benchmarks)

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1.0:
                self.waited += 1
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._tokens = 1.0
                self._at = time.monotonic()
            self._tokens -= 1.0
