"""One test suite that every driver passes, against its simulator or real hardware.

A driver's test module subclasses `DriverContract` and sets `case`:

    class TestMarlinContract(DriverContract):
        case = ContractCase(driver=MarlinDriver, simulator=MarlinSim,
                            options=MarlinOptions(...), sim_options=MarlinSimOptions(...),
                            short_step=..., long_step=...)

The same tests run on hardware when `CELLCTL_HARDWARE=1` and the case's
`hardware_options` is set (the simulator is then not started): swapping one
name switches the back end, as python-can's back-to-back tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cellctl.driver import Driver, DriverContext, DriverOptions, SimOptions, Simulator, TaskGroup
from cellctl.errors import CellError, LinkError
from cellctl.model import (
    DeviceState,
    Event,
    MetricSpec,
    Progress,
    Samples,
    Step,
    StepOutcome,
)

HARDWARE = os.environ.get("CELLCTL_HARDWARE") == "1"


@dataclass
class ContractCase:
    driver: type[Any]
    simulator: type[Any]
    options: DriverOptions
    sim_options: SimOptions
    short_step: Step  # finishes in a second or two on the simulator
    long_step: Step  # runs long enough to pause, stop and e-stop
    hardware_options: DriverOptions | None = None
    # Whether pause() of a running long step leads to HELD/SUSPENDED and resume() finishes it.
    supports_pause: bool = True
    bound_s: float = 10.0  # upper bound for any one wait in these tests
    events: list[Event] = field(default_factory=list)


@contextlib.asynccontextmanager
async def connected(case: ContractCase) -> AsyncIterator[tuple[Driver, Simulator | None]]:
    """Start the simulator (unless on hardware), connect the driver, run its serve()."""
    case.events.clear()
    sim: Simulator | None = None
    endpoint = None
    options = case.options
    if HARDWARE and case.hardware_options is not None:
        options = case.hardware_options
    else:
        sim = case.simulator(case.sim_options)
        await sim.__aenter__()
        endpoint = sim.endpoint
    ctx = DriverContext(device_id="dut", emit=case.events.append, endpoint=endpoint)
    driver: Driver = case.driver(ctx, options)
    try:
        async with asyncio.timeout(case.bound_s):
            await driver.__aenter__()
        async with TaskGroup() as tg:
            serving = tg.create_task(driver.serve(), name="serve")
            try:
                yield driver, sim
            finally:
                serving.cancel()
    finally:
        await driver.__aexit__(None, None, None)
        if sim is not None:
            await sim.__aexit__(None, None, None)


async def _wait_for(pred: Callable[[], bool], bound: float, what: str) -> None:
    async with asyncio.timeout(bound):
        while not pred():
            await asyncio.sleep(0.01)
    assert pred(), what


class DriverContract:
    case: ContractCase

    async def test_connects_and_declares_metrics(self) -> None:
        async with connected(self.case) as (driver, _):
            assert driver.status().state != DeviceState.UNAVAILABLE
            specs = list(driver.metrics())
            assert specs, "a driver declares at least one metric"
            assert all(isinstance(s, MetricSpec) for s in specs)
            names = [s.name for s in specs]
            assert len(names) == len(set(names)), "metric names are unique"

    async def test_samples_are_declared_metrics(self) -> None:
        async with connected(self.case) as (driver, _):
            declared = {s.name for s in driver.metrics()}
            await _wait_for(
                lambda: any(isinstance(e, Samples) for e in self.case.events),
                self.case.bound_s,
                "the driver emits samples while connected",
            )
            for ev in self.case.events:
                if isinstance(ev, Samples):
                    assert ev.device_id == "dut"
                    for s in ev.samples:
                        assert s.name in declared, f"sample {s.name!r} was not declared"

    async def test_exit_is_idempotent(self) -> None:
        async with connected(self.case) as (driver, _):
            pass
        await driver.__aexit__(None, None, None)  # a second exit never raises

    async def test_short_step_completes_with_progress(self) -> None:
        seen: list[Progress] = []
        async with connected(self.case) as (driver, _):
            async with asyncio.timeout(self.case.bound_s * 3):
                result = await driver.run(self.case.short_step, seen.append)
            assert result.outcome == StepOutcome.DONE, result.message
            assert seen, "progress is reported"
            await _wait_for(
                lambda: driver.status().state in (DeviceState.IDLE, DeviceState.COMPLETE),
                self.case.bound_s,
                "idle after the step",
            )

    async def test_stop_cancels_a_running_step(self) -> None:
        async with connected(self.case) as (driver, _), TaskGroup() as tg:
            task = tg.create_task(driver.run(self.case.long_step, lambda p: None))
            await _wait_for(
                lambda: driver.status().state == DeviceState.EXECUTE, self.case.bound_s, "executing"
            )
            await driver.stop()
            async with asyncio.timeout(self.case.bound_s):
                result = await task
            assert result.outcome == StepOutcome.CANCELLED

    async def test_pause_and_resume(self) -> None:
        if not self.case.supports_pause:
            pytest.skip("this device has no pause")
        async with connected(self.case) as (driver, _), TaskGroup() as tg:
            task = tg.create_task(driver.run(self.case.long_step, lambda p: None))
            await _wait_for(
                lambda: driver.status().state == DeviceState.EXECUTE, self.case.bound_s, "executing"
            )
            await driver.pause()
            await _wait_for(
                lambda: driver.status().state in (DeviceState.HELD, DeviceState.SUSPENDED),
                self.case.bound_s,
                "held after pause",
            )
            await driver.resume()
            await _wait_for(
                lambda: driver.status().state == DeviceState.EXECUTE,
                self.case.bound_s,
                "executing after resume",
            )
            await driver.stop()
            async with asyncio.timeout(self.case.bound_s):
                await task

    async def test_emergency_stop_aborts_and_reset_recovers(self) -> None:
        async with connected(self.case) as (driver, _), TaskGroup() as tg:
            task = tg.create_task(driver.run(self.case.long_step, lambda p: None))
            await _wait_for(
                lambda: driver.status().state == DeviceState.EXECUTE, self.case.bound_s, "executing"
            )
            async with asyncio.timeout(1.0):
                await driver.emergency_stop()
            async with asyncio.timeout(self.case.bound_s):
                result = await task
            assert result.outcome != StepOutcome.DONE
            await _wait_for(
                lambda: driver.status().state in (DeviceState.ABORTED, DeviceState.STOPPED),
                self.case.bound_s,
                "aborted after emergency stop",
            )
            await driver.reset()
            await _wait_for(
                lambda: driver.status().state == DeviceState.IDLE,
                self.case.bound_s,
                "idle after reset",
            )

    async def test_lost_link_ends_serve_with_link_error(self) -> None:
        if HARDWARE:
            pytest.skip("unplugging is manual on hardware")
        sim = self.case.simulator(self.case.sim_options)
        await sim.__aenter__()
        ctx = DriverContext(device_id="dut", emit=self.case.events.append, endpoint=sim.endpoint)
        driver: Driver = self.case.driver(ctx, self.case.options)
        try:
            await driver.__aenter__()
            serving = asyncio.ensure_future(driver.serve())
            await asyncio.sleep(0.2)
            await sim.__aexit__(None, None, None)
            with pytest.raises(LinkError):
                async with asyncio.timeout(self.case.bound_s * 2):
                    await serving
        finally:
            with contextlib.suppress(CellError):
                await driver.__aexit__(None, None, None)
