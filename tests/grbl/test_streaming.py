"""Character-counting streaming on the simulator: 20,000 lines, no overflow, full window."""

from __future__ import annotations

import asyncio
import random

from cellctl_drivers.grbl.driver import SYNC_LINE
from cellctl_drivers.grbl.protocol import MAX_LINE_CHARS

from cellctl.model import Progress, StepOutcome

from .conftest import connected, fast_sim, gcode_step


def move(length: int, x: float) -> str:
    """A move of exactly `length` characters; trailing zeros of a coordinate pad it."""
    head = f"X{x:.1f}" if length < 16 else f"G1X{x:.3f}Y0."
    assert len(head) <= length, length
    return head + "0" * (length - len(head))


def program(n: int, seed: int = 4) -> list[str]:
    """Mixed lengths up to GRBL's 79-character limit, mostly short as real G-code is.

    Some stretches tile the 128-byte window exactly (8 x 16 or 4 x 32 bytes with their
    newlines) with moves slow enough that the planner stays full: there the host's
    window, and the simulator's buffer, are exactly full."""
    rng = random.Random(seed)
    lines = ["G21G90G94G1"]
    x, direction = 0.0, 1.0
    while len(lines) < n:
        kind = rng.choice(("tile16", "tile32", "mixed", "mixed", "mixed", "mixed"))
        if kind == "mixed":
            lines.append("F60000")  # 0.1 mm in 0.1 ms: the stream, not motion, limits
            count, step = rng.randrange(200, 800), 0.1
        else:
            lines.append("F15000")  # 0.5 mm in 2 ms: the planner fills, the window too
            count, step = rng.randrange(20, 40), 0.5
        for _ in range(count):
            if kind == "tile16":
                length = 15
            elif kind == "tile32":
                length = 31
            elif rng.random() < 0.75:
                length = rng.randint(6, 24)
            else:
                length = rng.randint(25, MAX_LINE_CHARS)
            if not 0.0 <= x + direction * step <= 40.0:
                direction = -direction  # back and forth: no long return moves
            x = round(x + direction * step, 3)
            lines.append(move(length, x))
    return [*lines[: n - 1], move(MAX_LINE_CHARS, x)]


async def test_20000_mixed_lines_never_overflow_and_fill_the_window() -> None:
    lines = program(20_000)
    assert max(len(line) for line in lines) == MAX_LINE_CHARS
    step = gcode_step(lines, "stream-20000")
    seen: list[Progress] = []
    # Each 0.25 mm move at 60,000 mm/min takes 0.25 ms of machine time; at time factor 1
    # the planner stays full, so the host's window is what limits the stream.
    async with connected(fast_sim(time_factor=1.0)) as (driver, sim, _):
        async with asyncio.timeout(50):
            result = await driver.run(step, seen.append)
        assert result.outcome == StepOutcome.DONE, result.message
        assert sim.counters.overflows == 0, "the driver overflowed GRBL's RX buffer"
        assert sim.counters.rx_peak == 128
        assert sim.counters.rx_full_hits > 0, "the simulator saw its buffer exactly full"
        assert driver.window.peak == 128 and driver.window.full_hits > 0
        executed = [line for line in sim.executed if line != SYNC_LINE]
        assert executed == lines, "every line executed once, in order"
        assert seen[-1].lines_done == len(lines) and seen[-1].fraction == 1.0
        assert result.last_line == len(lines)
