"""Fixtures for the Marlin tests: a simulator on a real pseudo-terminal and a connected driver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.driver import DriverContext
from cellctl.model import Event, Program, ProgramKind, Step

# Host commands the driver sends on its own (handshake, polls, end of job).
HOST_COMMANDS = {
    "M110 N0",
    "M115",
    "M113 S2",
    "M155 S1",
    "M105",
    "M114",
    "M220",
    "M221",
    "M400",
    "M108",
}

Pair = Callable[..., contextlib.AbstractAsyncContextManager[tuple[MarlinSim, MarlinDriver]]]


@pytest.fixture
def marlin() -> Pair:
    """`async with marlin(sim_options, driver_options, events) as (sim, driver)`: serve() runs."""

    @contextlib.asynccontextmanager
    async def make(
        sim_opts: MarlinSimOptions,
        drv_opts: MarlinOptions | None = None,
        events: list[Event] | None = None,
    ) -> AsyncIterator[tuple[MarlinSim, MarlinDriver]]:
        sink: list[Event] = events if events is not None else []
        async with MarlinSim(sim_opts) as sim:
            ctx = DriverContext("printer", emit=sink.append, endpoint=sim.endpoint)
            driver = MarlinDriver(ctx, drv_opts or MarlinOptions(position_interval_s=0))
            try:
                async with asyncio.timeout(10):
                    await driver.__aenter__()
                async with asyncio.TaskGroup() as tg:
                    serving = tg.create_task(driver.serve(), name="serve")
                    try:
                        yield sim, driver
                    finally:
                        serving.cancel()
            finally:
                await driver.__aexit__(None, None, None)

    return make


def gcode_step(path: Path, start_line: int = 0, index: int = 0) -> Step:
    return Step(
        "job1", index, "print", Program(ProgramKind.GCODE, path=path), start_line=start_line
    )


@pytest.fixture
def step_for() -> Callable[..., Step]:
    return gcode_step


def file_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every command line, as the driver strips them."""
    out = []
    with path.open() as f:
        for i, raw in enumerate(f, start=1):
            cmd = raw.split(";")[0].strip()
            if cmd:
                out.append((i, cmd))
    return out


@pytest.fixture
def commands_of() -> Callable[[Path], list[tuple[int, str]]]:
    return file_commands


@pytest.fixture
def job_executed() -> Callable[[MarlinSim], list[str]]:
    """What the simulator ran, without the driver's own handshake and poll commands."""

    def pick(sim: MarlinSim, extra: set[str] | None = None) -> list[str]:
        skip = HOST_COMMANDS | (extra or set())
        return [c for c in sim.executed if c not in skip]

    return pick


async def wait_for(pred: Callable[[], Any], bound: float = 10.0, what: str = "") -> None:
    async with asyncio.timeout(bound):
        while not pred():
            await asyncio.sleep(0.01)


@pytest.fixture
def until() -> Callable[..., Any]:
    return wait_for
