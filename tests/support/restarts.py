"""Kill a simulated device while its driver is connected, bring it back, three times.

Shared by each driver's `test_restarts.py`. The device runs under the real
supervisor (`DeviceRunner`, real clock, short backoff) with the real driver
and a real simulator: every round kills the device while connected, waits
until the supervisor reports it unavailable, brings it back, waits for the
driver to reconnect on its own and runs a step to its end. A device task
that ended, or a connection that ended other than by a clean driver error,
fails the test: that is the silent loss of issue 14.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cellctl.config import DeviceCommon, DeviceConfig, SupervisorSection
from cellctl.driver import DriverOptions, Simulator
from cellctl.model import DeviceState, Event, Step, StepOutcome
from cellctl.registry import Registry
from cellctl.supervisor import DeviceRunner

POLICY = SupervisorSection(
    backoff_initial_s=0.05,
    backoff_max_s=0.25,
    connect_timeout_s=10.0,
    stable_after_s=0.0,
    disconnect_timeout_s=3.0,
)
BOUND_S = 20.0  # upper bound for any one wait; generous for a loaded machine
ROUNDS = 3


class Device(Protocol):
    """A simulated device the test can kill and bring back at the same address."""

    async def start(self) -> None: ...

    async def kill(self) -> None: ...


class FreshSim:
    """Each life is a new simulator instance (a power cycle: the firmware boots again).

    A serial simulator gets a new pseudo-terminal each life; `link` is a stable
    path pointed at it, as /dev/serial/by-id/… follows a replugged USB device.
    A TCP simulator keeps its address through its options (a fixed port)."""

    def __init__(self, make: Callable[[], Simulator], link: Path | None = None) -> None:
        self._make = make
        self.link = link
        self.sim: Simulator | None = None
        self.lives = 0

    async def start(self) -> None:
        sim = self._make()
        await sim.__aenter__()
        self.sim = sim
        self.lives += 1
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(sim.endpoint, tmp)
            os.replace(tmp, self.link)

    async def kill(self) -> None:
        sim, self.sim = self.sim, None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if sim is not None:
            await sim.__aexit__(None, None, None)


class Restartable:
    """A device whose simulator can stop and start its own server (OPC UA)."""

    def __init__(self, stop: Callable[[], Awaitable[None]], start: Callable[[], Awaitable[None]]):
        self._stop, self._start = stop, start

    async def start(self) -> None:
        await self._start()

    async def kill(self) -> None:
        await self._stop()


async def until(pred: Callable[[], bool], what: str, bound: float = BOUND_S) -> None:
    try:
        async with asyncio.timeout(bound):
            while not pred():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {bound} s waiting: {what}") from None


@contextlib.asynccontextmanager
async def supervised(
    driver: str, options: DriverOptions, events: list[Event]
) -> AsyncIterator[tuple[DeviceRunner, asyncio.Task[None]]]:
    config = DeviceConfig(id="dut", common=DeviceCommon(driver=driver), options=options)
    runner = DeviceRunner(config, Registry(), events.append, POLICY)
    task = asyncio.get_running_loop().create_task(runner.run(), name="device:dut")
    try:
        yield runner, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def kill_and_return(
    device: Device,
    driver: str,
    options: DriverOptions,
    step: Callable[[int], Step],
    rounds: int = ROUNDS,
) -> DeviceRunner:
    """Start `device`, supervise `driver` on it; `rounds` times: kill, return, reconnect, step."""
    events: list[Event] = []
    await device.start()
    try:
        async with supervised(driver, options, events) as (runner, task):
            await until(runner.connected.is_set, "first connect")
            await _step_done(runner, step(0))
            for i in range(1, rounds + 1):
                connects = runner.connects
                await device.kill()
                await until(
                    lambda: (
                        runner.state == DeviceState.UNAVAILABLE and not runner.connected.is_set()
                    ),
                    f"round {i}: the supervisor sees the device gone",
                )
                await device.start()
                await until(
                    lambda n=connects: runner.connects > n and runner.connected.is_set(),
                    f"round {i}: the driver reconnects",
                )
                await _step_done(runner, step(i))
                assert not task.done(), "the device task ended"
            assert runner.faults == 0, runner.last_failure
    finally:
        await device.kill()
    return runner


async def _step_done(runner: DeviceRunner, step: Step) -> None:
    progress: list[Any] = []
    # A step may find the device still settling after a reconnect (a PLC
    # cycling its state, a robot not yet ready): the supervisor has reported
    # it connected, so only a clean DONE counts.
    async with asyncio.timeout(BOUND_S):
        result = await runner.run_step(step, progress.append)
    assert result.outcome == StepOutcome.DONE, (step.key, result)
