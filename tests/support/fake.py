"""An in-test driver and simulator for the foundation's own tests.

It obeys the cellctl.driver contract but talks to nothing: the supervisor,
config and lifecycle tests need devices that fail, hang and crash on demand.
Drivers with real protocols are tested against their own simulators.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import ClassVar, Self

from pydantic import Field

from cellctl.driver import DriverContext, DriverOptions, ProgressSink, SimOptions, StateTracker
from cellctl.errors import LinkError, NotSupported
from cellctl.model import (
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricType,
    Progress,
    Sample,
    Samples,
    Setup,
    Step,
    StepOutcome,
    StepResult,
)

# Connection attempts per device id, across driver instances (the supervisor makes a
# new instance per attempt).
ATTEMPTS: Counter[str] = Counter()


class FakeOptions(DriverOptions):
    fail_connects: int = Field(default=0, ge=0)  # the first N connects raise LinkError
    hang_connect: bool = False  # every connect hangs
    crash_after_s: float | None = None  # serve() raises RuntimeError after this
    step_s: float = 0.05
    baudrate: int = 115200  # a typed option for config-error tests


class FakeSimOptions(SimOptions):
    label: str = "fake"


class FakeSim:
    name: ClassVar[str] = "fake"
    Options: ClassVar[type[SimOptions]] = FakeSimOptions

    def __init__(self, options: FakeSimOptions) -> None:
        self.options = options
        self.running = False

    @property
    def endpoint(self) -> str:
        return f"fake://{self.options.label}"

    async def __aenter__(self) -> Self:
        self.running = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.running = False


class FakeDriver:
    """In-test device: fails, hangs or crashes as its options say."""

    name: ClassVar[str] = "fake"
    Options: ClassVar[type[DriverOptions]] = FakeOptions
    simulator: ClassVar[str] = "fake"

    def __init__(self, ctx: DriverContext, options: FakeOptions) -> None:
        self.ctx = ctx
        self.options = options
        self._state = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self._lost = asyncio.Event()

    def metrics(self) -> Sequence[MetricSpec]:
        return [MetricSpec("counter", MetricType.INT)]

    async def __aenter__(self) -> Self:
        ATTEMPTS[self.ctx.device_id] += 1
        if self.options.hang_connect:
            await asyncio.Event().wait()
        if ATTEMPTS[self.ctx.device_id] <= self.options.fail_connects:
            raise LinkError("simulated connect failure")
        self._state.set(DeviceState.IDLE, "connected")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._state.set(DeviceState.UNAVAILABLE, "closed")

    async def serve(self) -> None:
        n = 0
        try:
            async with asyncio.timeout(self.options.crash_after_s):
                while True:
                    n += 1
                    self.ctx.emit(Samples(self.ctx.device_id, (Sample("counter", n),)))
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError("simulated driver crash") from None

    def status(self) -> DeviceStatus:
        return DeviceStatus(self._state.state)

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        self._state.set(DeviceState.EXECUTE, step.key)
        await asyncio.sleep(self.options.step_s)
        progress(Progress(fraction=1.0))
        self._state.set(DeviceState.IDLE, "done")
        return StepResult(StepOutcome.DONE)

    async def pause(self) -> None:
        raise NotSupported("fake device has no pause")

    async def resume(self) -> None:
        raise NotSupported("fake device has no pause")

    async def stop(self) -> None:
        return None

    async def emergency_stop(self) -> None:
        self._state.set(DeviceState.ABORTED, "emergency stop")

    async def reset(self) -> None:
        self._state.set(DeviceState.IDLE, "reset")

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("fake device has no automatic changeover")
