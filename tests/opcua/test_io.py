"""Writes are rate-limited; door and zone signals act on the program."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.sim import RobotSim

from cellctl.model import DeviceState, Program, ProgramKind, Step, StepOutcome

from .conftest import fresh, make_driver

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    yield await fresh(robot_sim, time_factor=4.0)


async def until(pred: Callable[[], bool], bound: float = 15.0) -> None:
    async with asyncio.timeout(bound):
        while not pred():
            await asyncio.sleep(0.02)


async def test_writes_are_rate_limited(sim: RobotSim) -> None:
    driver = make_driver(sim.endpoint, max_writes_per_s=20.0)
    async with driver:
        burst = driver._limiter.burst
        n = burst + 20
        t = time.monotonic()
        for i in range(n):
            await driver.write_tag("program_number", i)
        elapsed = time.monotonic() - t
    # A lower bound only: a loaded machine makes it slower, never faster.
    assert elapsed >= (n - burst) / 20.0 * 0.9
    assert driver._limiter.waited >= 15


async def test_open_door_holds_the_program_and_it_finishes_after(sim: RobotSim) -> None:
    driver = make_driver(sim.endpoint)
    step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="place"))  # 1 s
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        running = tg.create_task(driver.run(step, lambda p: None))
        await until(lambda: driver.status().state == DeviceState.EXECUTE)
        sim.set_door(False)
        await until(lambda: driver.status().state == DeviceState.HELD)
        assert driver.value("door_closed") is False
        sim.set_door(True)
        await driver.resume()
        async with asyncio.timeout(20):
            result = await running
        serving.cancel()
    assert result.outcome == StepOutcome.DONE, result.message


async def test_start_refused_while_the_zone_is_occupied(sim: RobotSim) -> None:
    sim.set_zone(False)
    driver = make_driver(sim.endpoint)
    step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        async with asyncio.timeout(20):
            result = await driver.run(step, lambda p: None)
        serving.cancel()
    assert result.outcome == StepOutcome.FAILED
    assert "error 5" in result.message
    assert sim.robot.starts == []


async def test_method_start_runs_a_program_with_progress(sim: RobotSim) -> None:
    # The contract suite runs the handshake style; this is the method style end to end.
    driver = make_driver(sim.endpoint, start="method")
    seen: list[float | None] = []
    step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        async with asyncio.timeout(20):
            result = await driver.run(step, lambda p: seen.append(p.fraction))
        serving.cancel()
    assert result.outcome == StepOutcome.DONE, result.message
    assert [s.via for s in sim.robot.starts] == ["method"]
    assert seen[0] == 0.0 and seen[-1] == 1.0
