"""A job step on a robot: start a program once (method or tag handshake), follow it to its end.

Runs on the daemon's loop and decides on the driver's value cache, which the
subscription keeps current; a decision that matters (before a start, after a
reconnect) reads the tags afresh. Never starts a program twice: when the link
drops while starting, it looks at the run counter after the reconnect instead
of trying again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cellctl.driver import ProgressSink
from cellctl.errors import CellError, LinkError, NotSupported
from cellctl.model import (
    DeviceState,
    MetricValue,
    Progress,
    Step,
    StepOutcome,
    StepResult,
)

from .boundary import Refused, TypeMismatch
from .options import ProgramSpec


class SessionLost(Exception):
    """Internal: the current session died; serve() re-creates it."""


class Robot(Protocol):
    """What a program run needs from the driver."""

    log: Any
    stop_requested: bool
    stop_cause: str  # who stopped it: the held step names it ("emergency stop", …)

    @property
    def state(self) -> DeviceState: ...

    @property
    def detail(self) -> str: ...

    def value(self, tag: str) -> MetricValue | None: ...

    async def fresh(self, names: list[str | None]) -> dict[str, MetricValue]: ...

    async def write(self, tag: str, value: MetricValue) -> None: ...

    async def call(self, obj: str, method: str, args: Sequence[MetricValue]) -> list[Any]: ...

    async def wait(self, pred: Callable[[], bool], within: float) -> bool: ...

    async def wait_reconnected(self) -> None: ...


def program_number(spec: ProgramSpec, step: Step) -> int:
    name = step.program.name.strip()
    if name in spec.programs:
        return int(spec.programs[name])
    if name.lstrip("-").isdigit():
        return int(name)
    known = ", ".join(sorted(spec.programs)) or "none"
    raise NotSupported(f"unknown robot program {name!r} (known: {known}, or a number)")


class ProgramRun:
    """One step: one program number, started at most once."""

    def __init__(
        self,
        robot: Robot,
        spec: ProgramSpec,
        number: int,
        step: Step,
        state_tag: str | None,
    ) -> None:
        self.robot = robot
        self.spec = spec
        self.number = number
        self.step = step
        self.state_tag = state_tag

    def _cached(self, tag: str | None) -> MetricValue | None:
        return None if tag is None else self.robot.value(tag)

    async def run(self, progress: ProgressSink) -> StepResult:
        progress(Progress(fraction=0.0))
        started = await self._start()
        if isinstance(started, StepResult):
            return started
        return await self._follow(started, progress)

    async def _start(self) -> StepResult | int | None:
        """Start the program once. Returns the run counter of the new run (None if the
        robot has none), or the step's result if it never started."""
        spec, robot, number = self.spec, self.robot, self.number
        await robot.wait_reconnected()
        before = await self._fresh_or_interrupted([spec.run_counter_tag, self.state_tag])
        if isinstance(before, StepResult):
            return before
        if robot.state not in (DeviceState.IDLE, DeviceState.COMPLETE):
            return StepResult(StepOutcome.FAILED, f"robot not ready ({robot.detail})")
        counter0 = before.get(spec.run_counter_tag or "")
        try:
            if spec.start == "method":
                failed = await self._start_method()
            else:
                failed = await self._start_handshake()
        except TypeMismatch as exc:
            # Found before it was sent: the robot was not asked to start anything.
            return StepResult(StepOutcome.FAILED, f"program {number} not started: {exc}")
        except (SessionLost, LinkError) as exc:
            # We do not know whether the robot took the start: look, never retry.
            return await self._after_lost_start(counter0, str(exc))
        if failed is not None:
            return failed
        after = await self._fresh_or_interrupted(
            [spec.run_counter_tag, spec.error_tag, spec.done_tag, self.state_tag]
        )
        if isinstance(after, StepResult):
            return await self._after_lost_start(counter0, after.message)
        if spec.error_tag and after.get(spec.error_tag):
            return StepResult(
                StepOutcome.FAILED, f"robot refused program {number}: error {after[spec.error_tag]}"
            )
        counter = after.get(spec.run_counter_tag or "")
        if spec.run_counter_tag and counter == counter0:
            return StepResult(
                StepOutcome.FAILED, f"robot acknowledged program {number} but did not start it"
            )
        return int(counter) if counter is not None else None

    async def _fresh_or_interrupted(
        self, names: list[str | None]
    ) -> dict[str, MetricValue] | StepResult:
        for _ in range(2):
            try:
                return await self.robot.fresh(names)
            except (SessionLost, LinkError):
                await self.robot.wait_reconnected()
        return StepResult(StepOutcome.INTERRUPTED, "link lost while reading the robot")

    async def _after_lost_start(
        self, counter0: MetricValue | None, why: str
    ) -> StepResult | int | None:
        spec, robot = self.spec, self.robot
        await robot.wait_reconnected()
        if spec.start == "handshake" and spec.request_tag:
            with contextlib.suppress(CellError, SessionLost):
                await robot.write(spec.request_tag, False)
        now = await self._fresh_or_interrupted([spec.run_counter_tag])
        if isinstance(now, StepResult):
            return now
        counter = now.get(spec.run_counter_tag or "")
        if spec.run_counter_tag and counter is not None and counter != counter0:
            robot.log.info("the robot took the start before the link dropped; following it")
            return int(counter)
        return StepResult(
            StepOutcome.INTERRUPTED, f"link lost while starting; the robot did not start ({why})"
        )

    async def _start_method(self) -> StepResult | None:
        spec, number = self.spec, self.number
        assert spec.method is not None and spec.object is not None
        args: list[MetricValue] = []
        for a in spec.args:
            if a == "$program":
                args.append(number)
            elif isinstance(a, str) and a.startswith("$param."):
                key = a.removeprefix("$param.")
                if key not in self.step.program.parameters:
                    return StepResult(StepOutcome.FAILED, f"step has no parameter {key!r}")
                args.append(self.step.program.parameters[key])
            else:
                args.append(a)
        try:
            out = await self.robot.call(spec.object, spec.method, args)
        except Refused as exc:
            return StepResult(StepOutcome.FAILED, f"start method refused: {exc.status}")
        if (
            out
            and isinstance(out[0], int)
            and not isinstance(out[0], bool)
            and out[0] != spec.result_ok
        ):
            return StepResult(
                StepOutcome.FAILED, f"robot refused program {number}: result {out[0]}"
            )
        return None

    async def _start_handshake(self) -> StepResult | None:
        spec, robot, number = self.spec, self.robot, self.number
        assert spec.number_tag and spec.request_tag and spec.ack_tag
        ack = spec.ack_tag
        if robot.value(ack):
            if not await robot.wait(lambda: not robot.value(ack), spec.clear_timeout_s):
                return StepResult(StepOutcome.FAILED, f"{ack} is still set from an earlier request")
        await robot.write(spec.number_tag, number)
        await robot.write(spec.request_tag, True)
        acked = await robot.wait(lambda: bool(robot.value(ack)), spec.ack_timeout_s)
        await robot.write(spec.request_tag, False)
        if not acked:
            return StepResult(
                StepOutcome.FAILED,
                f"no acknowledge of program {number} within {spec.ack_timeout_s}s",
            )
        if not await robot.wait(lambda: not robot.value(ack), spec.clear_timeout_s):
            robot.log.warning("acknowledge did not fall after the request was cleared", tag=ack)
        return None

    async def _follow(self, run: int | None, progress: ProgressSink) -> StepResult:
        spec, robot, number = self.spec, self.robot, self.number
        deadline = time.monotonic() + spec.done_timeout_s
        last_fraction: float | None = None
        seen_running = False
        # Without a run counter, a done still latched from the previous run must
        # be seen to fall before a done counts.
        done_armed = run is not None or not self._cached(spec.done_tag)

        def done() -> bool:
            nonlocal done_armed
            value = bool(self._cached(spec.done_tag))
            if not value:
                done_armed = True
            return value and done_armed

        def mine() -> bool:
            return run is None or self._cached(spec.run_counter_tag) == run

        def finished() -> bool:
            nonlocal last_fraction, seen_running
            if spec.progress_tag:
                frac = self._cached(spec.progress_tag)
                if isinstance(frac, int | float) and frac != last_fraction and mine():
                    last_fraction = float(frac)
                    progress(Progress(fraction=max(0.0, min(1.0, last_fraction))))
            if robot.state in (DeviceState.EXECUTE, DeviceState.HELD, DeviceState.SUSPENDED):
                seen_running = True
            if not mine():
                return True
            if done() or (spec.error_tag and self._cached(spec.error_tag)):
                return True
            return robot.state in (
                DeviceState.IDLE,
                DeviceState.STOPPED,
                DeviceState.ABORTED,
                DeviceState.COMPLETE,
            ) and (seen_running or robot.stop_requested)

        while True:
            remaining = deadline - time.monotonic()
            try:
                if not await robot.wait(finished, max(0.0, remaining)):
                    return StepResult(
                        StepOutcome.FAILED,
                        f"program {number} did not finish within {spec.done_timeout_s}s",
                    )
            except SessionLost:
                await robot.wait_reconnected()
                if spec.after_reconnect == "interrupt":
                    return StepResult(
                        StepOutcome.INTERRUPTED, f"link lost while program {number} ran"
                    )
                # Decide on what the robot says now, not on what we last saw.
                now = await self._fresh_or_interrupted(
                    [spec.run_counter_tag, spec.done_tag, spec.error_tag, self.state_tag]
                )
                if isinstance(now, StepResult):
                    return now
                seen_running = True  # it ran before the link dropped
                continue
            break
        if not mine():
            return StepResult(
                StepOutcome.INTERRUPTED, "the robot's run counter moved on: another run started"
            )
        if spec.error_tag and self._cached(spec.error_tag):
            return StepResult(
                StepOutcome.FAILED,
                f"program {number} failed: error {self._cached(spec.error_tag)} ({robot.detail})",
            )
        if done():
            progress(Progress(fraction=1.0, remaining_s=0.0))
            return StepResult(StepOutcome.DONE)
        if robot.stop_requested:
            return StepResult(StepOutcome.CANCELLED, f"program {number} {robot.stop_cause}")
        return StepResult(
            StepOutcome.FAILED, f"program {number} ended without done ({robot.detail})"
        )
