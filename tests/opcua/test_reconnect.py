"""Server restart mid-program, bad status codes: what the driver publishes and decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.sim import RobotSim

from cellctl.model import (
    DeviceState,
    Event,
    Program,
    ProgramKind,
    Quality,
    Samples,
    Step,
    StepOutcome,
)

from .conftest import fresh, make_driver

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEND = Step("job-7", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="tend"))


@pytest_asyncio.fixture(loop_scope="session")
async def sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    # tend: 8 s of robot time at time factor 3 ≈ 2.7 s; the watchdog outlives a restart.
    yield await fresh(robot_sim, time_factor=3.0, heartbeat_timeout_s=20.0)


async def until(pred: Callable[[], bool], bound: float = 15.0) -> None:
    async with asyncio.timeout(bound):
        while not pred():
            await asyncio.sleep(0.02)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((time.monotonic(), event))

    def samples(
        self, since: float = 0.0, until: float = float("inf")
    ) -> list[tuple[float, object]]:
        return [
            (t, s)
            for t, e in self.events
            if isinstance(e, Samples) and since <= t <= until
            for s in e.samples
        ]


async def _restart_mid_program(
    sim: RobotSim, after_reconnect: str
) -> tuple[OpcUaDriver, Recorder, StepOutcome, float, float]:
    sim.reset_robot()
    rec = Recorder()
    driver = make_driver(sim.endpoint, None, reconnect_grace_s=15.0)
    driver.ctx = type(driver.ctx)("robot", rec, sim.endpoint)
    program = driver.o.program
    assert program is not None
    driver.o = driver.o.model_copy(
        update={"program": program.model_copy(update={"after_reconnect": after_reconnect})}
    )
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        running = tg.create_task(driver.run(TEND, lambda p: None))
        await until(lambda: sim.robot.progress > 0.1)
        down_at = time.monotonic()
        await sim.stop_server()
        await until(lambda: driver.status().state == DeviceState.UNAVAILABLE)
        await asyncio.sleep(0.5)
        up_at = time.monotonic()
        await sim.start_server()
        async with asyncio.timeout(30):
            result = await running
        await until(lambda: driver.reconnects >= 1)
        # Subscriptions are back: the arm's joints keep arriving as good samples.
        seen = len(rec.samples(since=up_at))
        if sim.robot.state.value == "RUNNING":
            await until(lambda: len(rec.samples(since=up_at)) > seen)
        serving.cancel()
    return driver, rec, result.outcome, down_at, up_at


async def test_restart_mid_program_follows_the_same_run(sim: RobotSim) -> None:
    driver, rec, outcome, down_at, up_at = await _restart_mid_program(sim, "follow")
    assert outcome == StepOutcome.DONE
    assert [s.program for s in sim.robot.starts] == [3], "started exactly once"
    assert driver.reconnects >= 1
    # From the moment the driver saw the loss until the server was back, nothing
    # was published as good. (Values already on the wire when the server went
    # down may still arrive, good and correctly stamped, before the loss is seen.)
    window = rec.samples(since=down_at, until=up_at)
    first_bad = next(
        (i for i, (_, s) in enumerate(window) if s.quality == Quality.BAD),  # type: ignore[attr-defined]
        None,
    )
    assert first_bad is not None, "the loss itself is published"
    during = window[first_bad:]
    assert all(s.quality == Quality.BAD for _, s in during)  # type: ignore[attr-defined]
    bad_names = {s.name for _, s in during}  # type: ignore[attr-defined]
    assert {m.name for m in driver.metrics()} <= bad_names, "every metric is marked stale"
    # After the restart, good values come back through the restored subscription.
    after = [s for _, s in rec.samples(since=up_at) if s.quality == Quality.GOOD]  # type: ignore[attr-defined]
    assert any(s.name == "j1" for s in after)


async def test_restart_mid_program_interrupts_when_so_configured(sim: RobotSim) -> None:
    _, _, outcome, _, _ = await _restart_mid_program(sim, "interrupt")
    assert outcome == StepOutcome.INTERRUPTED
    assert [s.program for s in sim.robot.starts] == [3], "never started again"


async def test_bad_status_is_published_as_bad_quality(sim: RobotSim) -> None:
    sim.reset_robot()
    rec = Recorder()
    driver = make_driver(sim.endpoint)
    driver.ctx = type(driver.ctx)("robot", rec, sim.endpoint)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        await sim.inject_bad_status("ZoneClear")

        def bad_zone() -> bool:
            return any(
                s.name == "zone_clear" and s.quality == Quality.BAD  # type: ignore[attr-defined]
                for _, s in rec.samples()
            )

        await until(bad_zone)
        serving.cancel()


async def test_slow_server_still_runs_a_program(sim: RobotSim) -> None:
    sim.reset_robot()
    sim.slow_s = 0.1
    try:
        driver = make_driver(sim.endpoint, None)
        step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))
        async with driver, asyncio.TaskGroup() as tg:
            serving = tg.create_task(driver.serve())
            async with asyncio.timeout(30):
                result = await driver.run(step, lambda p: None)
            serving.cancel()
        assert result.outcome == StepOutcome.DONE, result.message
    finally:
        sim.slow_s = 0.0


async def test_start_method_bad_status_fails_the_step(sim: RobotSim) -> None:
    sim.reset_robot()
    sim.fail_start_status = "BadResourceUnavailable"
    try:
        driver = make_driver(sim.endpoint, None, start="method")
        step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))
        async with driver, asyncio.TaskGroup() as tg:
            serving = tg.create_task(driver.serve())
            async with asyncio.timeout(20):
                result = await driver.run(step, lambda p: None)
            serving.cancel()
        assert result.outcome == StepOutcome.FAILED
        assert "BadResourceUnavailable" in result.message
        assert sim.robot.starts == []
    finally:
        sim.fail_start_status = ""


async def _bounce(sim: RobotSim) -> None:
    await sim.stop_server()
    await asyncio.sleep(0.3)
    await sim.start_server()


async def test_link_lost_after_the_robot_took_the_start_follows_that_run(sim: RobotSim) -> None:
    # The robot starts at once but acknowledges late; the link drops in between.
    sim.ack_delay_s = 2.0
    driver = make_driver(sim.endpoint, reconnect_grace_s=15.0)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        running = tg.create_task(driver.run(TEND, lambda p: None))
        await until(lambda: len(sim.robot.starts) == 1)
        await _bounce(sim)
        async with asyncio.timeout(30):
            result = await running
        serving.cancel()
    assert result.outcome == StepOutcome.DONE, result.message
    assert len(sim.robot.starts) == 1, "the start was not repeated"


async def test_link_lost_before_the_robot_heard_the_request_interrupts(sim: RobotSim) -> None:
    sim.deaf = True
    driver = make_driver(sim.endpoint, reconnect_grace_s=15.0)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        running = tg.create_task(driver.run(TEND, lambda p: None))
        await until(lambda: bool(sim._inputs.get("StartRequest")))
        await _bounce(sim)
        async with asyncio.timeout(30):
            result = await running
        sim.deaf = False  # the robot hears again: the request must be gone by now
        await asyncio.sleep(0.3)
        serving.cancel()
    assert result.outcome == StepOutcome.INTERRUPTED, result.message
    assert sim.robot.starts == [], "the driver did not start it a second time"
    assert not sim._inputs.get("StartRequest"), "the request was withdrawn"
