"""Event-loop lag measured on 1 ms ticks while some work runs off the loop.

Shared by the planning benchmarks: a re-plan must never stall the loop that
streams G-code, so each reports the lag its ticks saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def lag_while(run: Callable[[], Awaitable[object]] | None, idle_s: float) -> dict[str, float]:
    """p50/p99/max lag (ms) of 1 ms ticks while `run` is awaited, or for `idle_s` without it."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        t0 = time.perf_counter()
        if run is None:
            await asyncio.sleep(idle_s)
        else:
            await run()
        took = time.perf_counter() - t0
        done.set()
    lags.sort()
    return {
        "replan_s": took,
        "p50_ms": lags[len(lags) // 2],
        "p99_ms": lags[int(len(lags) * 0.99)],
        "max_ms": lags[-1],
    }
