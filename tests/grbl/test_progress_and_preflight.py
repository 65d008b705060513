"""A job with M6 ends at 100 %; `$C` runs once per step with both pre-flight switches on."""

from __future__ import annotations

import asyncio

from cellctl.jobs.preflight import device_check
from cellctl.model import Progress, StepOutcome

from .conftest import connected, fast_sim, gcode_step


async def test_progress_reaches_100_percent_with_tool_changes() -> None:
    # The 4-line job of the report (0.81 at its end), plus an M6 sharing its line with a move.
    lines = ["G21G90", "G0X1", "M6T2", "G0X2", "G0Z1M6T3"]
    seen: list[Progress] = []
    async with connected(fast_sim(), tool_change_macro=("G4P0.01",)) as (driver, _, _):
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "m6-progress"), seen.append)
    assert result.outcome == StepOutcome.DONE, result.message
    assert "5 lines, 2 tool change(s)" in result.message
    last = seen[-1]
    assert last.fraction == 1.0
    assert last.lines_done == 5 and last.bytes_done == last.bytes_total
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions == sorted(fractions), "progress never goes back"


async def test_one_check_per_step_with_program_check_and_preflight() -> None:
    step = gcode_step(["G21G90", "G1X1F600", "M6T2", "G0X0"], "check-once")
    other = gcode_step(["G21G90", "G0X3"], "check-other")
    async with connected(fast_sim(), preflight=True, tool_change_macro=("G4P0.01",)) as (
        driver,
        sim,
        _,
    ):
        async with asyncio.timeout(30):
            # What the job service does: its device check, then the step.
            await device_check(driver, step, 20.0)
            result = await driver.run(step, lambda p: None)
            assert result.outcome == StepOutcome.DONE, result.message
            assert sim.counters.check_runs == 1
            # A step nobody checked before is checked by the driver itself.
            result = await driver.run(other, lambda p: None)
            assert result.outcome == StepOutcome.DONE, result.message
            assert sim.counters.check_runs == 2
            # A check is used once: running the same step again checks it again.
            result = await driver.run(other, lambda p: None)
            assert result.outcome == StepOutcome.DONE, result.message
            assert sim.counters.check_runs == 3
