"""Shared helpers for the GRBL tests: G-code files and a connected driver on the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from cellctl_drivers.grbl.driver import GrblDriver, GrblOptions
from cellctl_drivers.grbl.sim import GrblSim, GrblSimOptions

from cellctl.driver import DriverContext
from cellctl.model import Event, Program, ProgramKind, Step

PROGRAM_DIR = Path(tempfile.mkdtemp(prefix="cellctl-grbl-tests-"))


def gcode_step(lines: Sequence[str], name: str, job: str = "job") -> Step:
    path = PROGRAM_DIR / f"{name}.nc"
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return Step(job_id=job, index=0, process="mill", program=Program(ProgramKind.GCODE, path=path))


def fast_sim(**kw: Any) -> GrblSimOptions:
    return GrblSimOptions(**{"emulate_link": False, "time_factor": 20.0, **kw})


@contextlib.asynccontextmanager
async def connected(
    sim_options: GrblSimOptions, **options: Any
) -> AsyncIterator[tuple[GrblDriver, GrblSim, list[Event]]]:
    """A simulator, a connected driver, and its serve() running; all torn down after."""
    events: list[Event] = []
    async with GrblSim(sim_options) as sim:
        ctx = DriverContext(device_id="cnc", emit=events.append, endpoint=sim.endpoint)
        driver = GrblDriver(ctx, GrblOptions(**options))
        async with asyncio.timeout(10):
            await driver.__aenter__()
        try:
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(driver.serve(), name="serve")
                try:
                    yield driver, sim, events
                finally:
                    serving.cancel()
        finally:
            await driver.__aexit__(None, None, None)


async def wait_for(pred: Callable[[], bool], what: str, bound: float = 10.0) -> None:
    try:
        async with asyncio.timeout(bound):
            while not pred():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting: {what}") from None
