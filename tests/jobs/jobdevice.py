"""An in-test machine for the job tests: a driver and its simulator, obeying cellctl.driver.

The job service's own tests use this pair rather than a real driver, so that a
step's timing, failures and link losses are scripted exactly. The simulator
models what matters to jobs: a G-code program
takes time per line and acknowledges lines as it goes, a step can be stopped,
resumed from a line, fail on the device, or lose its link. It appends every
step it starts and finishes to a log file (one `write()` per line, fsync'd):
the crash tests read it as "what the machine physically did".

| simulated condition        | PackML state |
|----------------------------|--------------|
| connected, nothing to do   | Idle         |
| running a step             | Execute      |
| paused                     | Held         |
| emergency stop             | Aborted      |
| link lost                  | (Unavailable, set by the supervisor) |
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from pydantic import Field

from cellctl.driver import DriverContext, DriverOptions, ProgressSink, SimOptions, StateTracker
from cellctl.errors import LinkError, NotSupported, StepFailed
from cellctl.model import (
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricType,
    ProgramKind,
    Progress,
    Sample,
    Samples,
    Setup,
    Step,
    StepOutcome,
    StepResult,
)

FAIL_MARK = "; SIM-FAIL"  # the machine faults when it reaches this line
CHECK_FAIL_MARK = "; CHECK-FAIL"  # the machine's own program check ($C-like) rejects this line

_SIMS: dict[str, JobSim] = {}
_ids = itertools.count(1)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class JobSimOptions(SimOptions):
    log: str | None = None  # append-only record of steps started and finished
    line_s: float = Field(default=0.01, ge=0)  # per G-code line, before time_factor
    step_s: float = Field(default=0.2, ge=0)  # a step without G-code
    fail_names: tuple[str, ...] = ()  # robot programs / recipes that fail on the machine
    label: str = "machine"  # names this machine in the log


class JobSim:
    """The simulated machine; the driver reaches it through its endpoint name."""

    name: ClassVar[str] = "jobsim"
    Options: ClassVar[type[SimOptions]] = JobSimOptions

    def __init__(self, options: JobSimOptions) -> None:
        self.options = options
        self._endpoint = f"jobsim://{os.getpid()}-{next(_ids)}"
        self.unplugged = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._interrupt = asyncio.Event()  # set by a stop or an unplug
        self.paused = False
        self.started: list[tuple[str, int]] = []  # (step key, start line)
        self.finished: list[str] = []

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def __aenter__(self) -> Self:
        _SIMS[self._endpoint] = self
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        _SIMS.pop(self._endpoint, None)
        self.unplug()

    def unplug(self) -> None:
        self.unplugged.set()
        self._interrupt.set()

    def replug(self) -> None:
        self.unplugged.clear()
        self._interrupt.clear()

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._interrupt.set()

    def record(self, what: str) -> None:
        if self.options.log is None:
            return
        fd = os.open(self.options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (what + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _scaled(self, seconds: float) -> float:
        return seconds / self.options.time_factor

    async def execute(self, step: Step, progress: ProgressSink) -> StepResult:
        self.stop_requested.clear()
        if not self.unplugged.is_set():
            self._interrupt.clear()
        self.started.append((step.key, step.start_line))
        self.record(f"start {step.key} {step.start_line} {self.options.label}")
        if step.program.kind == ProgramKind.GCODE and step.program.path is not None:
            result = await self._gcode(step, progress)
        else:
            result = await self._other(step, progress)
        if result.outcome == StepOutcome.DONE:
            self.finished.append(step.key)
            self.record(f"done {step.key} {self.options.label}")
        return result

    async def _wait(self, seconds: float) -> StepOutcome | None:
        """Sleep simulated time; an unplug or a stop ends it early."""
        try:
            async with asyncio.timeout(self._scaled(seconds)):
                await self._interrupt.wait()
        except TimeoutError:
            pass
        if self.unplugged.is_set():
            return StepOutcome.INTERRUPTED
        if self.stop_requested.is_set():
            return StepOutcome.CANCELLED
        return None

    async def _gcode(self, step: Step, progress: ProgressSink) -> StepResult:
        assert step.program.path is not None
        text = await asyncio.to_thread(_read, Path(step.program.path))
        lines = text.splitlines()
        first = max(step.start_line, 1)
        batch = 20
        line_no = first - 1
        for start in range(first, len(lines) + 1, batch):
            chunk = lines[start - 1 : start - 1 + batch]
            for offset, text in enumerate(chunk):
                if text.strip().startswith(FAIL_MARK):
                    return StepResult(
                        StepOutcome.FAILED, f"machine fault at line {start + offset}", line_no
                    )
            ended = await self._wait(self.options.line_s * len(chunk))
            if ended is not None:
                return StepResult(ended, f"{ended.value} at line {line_no}", line_no)
            line_no = start + len(chunk) - 1
            progress(
                Progress(
                    fraction=line_no / max(len(lines), 1),
                    lines_done=line_no,
                    last_acked_line=line_no,
                )
            )
        return StepResult(StepOutcome.DONE, last_line=line_no)

    async def _other(self, step: Step, progress: ProgressSink) -> StepResult:
        ended = await self._wait(self.options.step_s / 2)
        if ended is not None:
            return StepResult(ended, ended.value)
        if step.program.name in self.options.fail_names:
            return StepResult(StepOutcome.FAILED, f"program {step.program.name!r} faulted")
        progress(Progress(fraction=0.5))
        ended = await self._wait(self.options.step_s / 2)
        if ended is not None:
            return StepResult(ended, ended.value)
        progress(Progress(fraction=1.0))
        return StepResult(StepOutcome.DONE)


class JobDriverOptions(DriverOptions):
    sample_s: float = Field(default=0.5, gt=0)


class JobDriver:
    """Driver for JobSim; implements SupportsPreflight like GRBL's `$C` check."""

    name: ClassVar[str] = "jobsim"
    Options: ClassVar[type[DriverOptions]] = JobDriverOptions
    simulator: ClassVar[str] = "jobsim"

    def __init__(self, ctx: DriverContext, options: JobDriverOptions) -> None:
        self.ctx = ctx
        self.options = options
        self._state = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self._sim: JobSim | None = None

    def metrics(self) -> Sequence[MetricSpec]:
        return [MetricSpec("steps_done", MetricType.INT)]

    async def __aenter__(self) -> Self:
        sim = _SIMS.get(self.ctx.endpoint or "")
        if sim is None or sim.unplugged.is_set():
            raise LinkError(f"no simulated machine at {self.ctx.endpoint}")
        self._sim = sim
        self._state.set(DeviceState.IDLE, "connected")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sim = None

    def _machine(self) -> JobSim:
        if self._sim is None or self._sim.unplugged.is_set():
            raise LinkError("link lost")
        return self._sim

    async def serve(self) -> None:
        sim = self._machine()
        while not sim.unplugged.is_set():
            self.ctx.emit(Samples(self.ctx.device_id, (Sample("steps_done", len(sim.finished)),)))
            try:
                async with asyncio.timeout(self.options.sample_s):
                    await sim.unplugged.wait()
            except TimeoutError:
                pass
        raise LinkError("link lost")

    def status(self) -> DeviceStatus:
        return DeviceStatus(self._state.state)

    async def preflight(self, step: Step) -> None:
        self._machine()
        if step.program.path is None:
            return
        text = await asyncio.to_thread(_read, Path(step.program.path))
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip().startswith(CHECK_FAIL_MARK):
                raise StepFailed(f"line {n}: error:20 (unsupported command)")

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        sim = self._machine()
        self._state.set(DeviceState.EXECUTE, step.key)
        try:
            result = await sim.execute(step, progress)
        finally:
            if not sim.unplugged.is_set():
                self._state.set(DeviceState.IDLE, "step ended")
        return result

    async def pause(self) -> None:
        raise NotSupported("the job test machine has no pause")

    async def resume(self) -> None:
        raise NotSupported("the job test machine has no pause")

    async def stop(self) -> None:
        self._machine().request_stop()

    async def emergency_stop(self) -> None:
        if self._sim is not None:
            self._sim.request_stop()
        self._state.set(DeviceState.ABORTED, "emergency stop")

    async def reset(self) -> None:
        self._state.set(DeviceState.IDLE, "reset")

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("an operator changes the setup")
