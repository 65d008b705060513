"""Shared set-up for the Modbus tests: the integrator-style map in plc.toml and a simulated PLC."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.options import ModbusOptions
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions

from cellctl.driver import DriverContext
from cellctl.model import Event, Program, ProgramKind, Step

HERE = Path(__file__).parent
BOUND = 10.0  # upper bound for any single wait in these tests


def plc_map(**changes: Any) -> dict[str, Any]:
    raw = tomllib.loads((HERE / "plc.toml").read_text())
    raw.update(changes)
    return raw


def plc_options(**changes: Any) -> ModbusOptions:
    return ModbusOptions.model_validate(plc_map(**changes))


@pytest.fixture
def options() -> ModbusOptions:
    return plc_options()


@pytest.fixture
async def sim() -> AsyncIterator[PlcSim]:
    async with PlcSim(PlcSimOptions(time_factor=10.0)) as plc:
        yield plc


@contextlib.asynccontextmanager
async def running(
    sim: PlcSim, options: ModbusOptions, events: list[Event] | None = None
) -> AsyncIterator[ModbusDriver]:
    """A driver connected to `sim` with its serve() running; torn down in order."""
    sink = events.append if events is not None else (lambda e: None)
    driver = ModbusDriver(DriverContext("plc", sink, sim.endpoint), options)
    async with asyncio.timeout(BOUND):
        await driver.__aenter__()
    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(driver.serve(), name="serve")
            try:
                yield driver
            finally:
                serving.cancel()
    finally:
        await driver.__aexit__(None, None, None)


def recipe_step(key: str = "job1", cycle_time_s: float = 2.0, **params: Any) -> Step:
    parameters: dict[str, Any] = {"cycle_time": cycle_time_s, **params}
    return Step(
        key, 0, "plc-cycle", Program(ProgramKind.PLC_RECIPE, name="7", parameters=parameters)
    )
