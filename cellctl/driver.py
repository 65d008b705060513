"""The driver contract: the only cellctl module a driver builds on.

A driver is an async context manager: entering it connects and handshakes,
leaving it disconnects (idempotent, never raises). While connected, the
supervisor runs `serve()`, which owns the driver's background I/O (readers,
pollers, heartbeats) and returns or raises `LinkError` when the link is lost.
Job steps run through `run()` concurrently with `serve()`.

Every driver names a simulator: a simulated device that speaks the real
protocol at the transport boundary. With `backend = "sim"` the supervisor
starts that simulator and hands its endpoint to the driver in the context.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict, model_validator

from cellctl.errors import CellError
from cellctl.model import (
    DeviceState,
    DeviceStatus,
    Event,
    MetricSpec,
    Progress,
    Setup,
    StateChanged,
    Step,
    StepResult,
)

# Drivers take their TaskGroup from here (asyncio's leaks cancel requests on 3.11/3.12).
from cellctl.tasks import TaskGroup as TaskGroup

EventSink = Callable[[Event], None]
"""Non-blocking: puts an event on the app's bus. Never awaits, never raises."""

ProgressSink = Callable[[Progress], None]
"""Non-blocking: reports progress of the running step."""


@dataclass(frozen=True)
class StartProblem:
    """What keeps a device from starting (or, with `warning`, what may): `key` is the
    path of the offending key inside the device's table, e.g. "port"."""

    key: str
    message: str
    warning: bool = False


class DriverOptions(BaseModel):
    """Base for a driver's config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def warnings(self) -> list[str]:
        """Valid but probably not what was meant: `key: why`, one each (`cellctl check`)."""
        return []

    def start_problems(self, backend: str) -> list[StartProblem]:
        """What the types cannot say but starting needs: an address for backend "real",
        certificate files that exist and parse … No network I/O. `cellctl check` and
        `cellctl run` both refuse a config with any problem that is not a warning, with
        the same words (cellctl/startcheck.py)."""
        return []


class SecretUnavailable(CellError):
    """A secret's variable is not set or its file cannot be read."""


class Secret(BaseModel):
    """A secret named by where it lives (`env` or `file`), never written in the config.

    Here rather than in cellctl.config so that drivers' options can take one too.
    Resolved only when used (`reveal()`, at connect), so that commands that talk to
    no device (`cellctl jobs --local` …) work without it; `cellctl check` and the
    start of `cellctl run` resolve every secret and name each missing one by key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_place(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError('expected exactly one of env = "VAR" or file = "/path"')
        return self

    def reveal(self) -> str:
        """The secret's value, read now. Raises SecretUnavailable."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretUnavailable(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise SecretUnavailable(
                f"cannot read secret file {self.file}: {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r}, file={self.file!r})"

    __str__ = __repr__


class SimOptions(BaseModel):
    """Base for a simulator's `[devices.<id>.sim]` table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_factor: float = 1.0


def _discard(_: Event) -> None:
    return None


@dataclass(frozen=True)
class DriverContext:
    """What the supervisor gives a driver besides its options."""

    device_id: str
    emit: EventSink = _discard
    # Set for `backend = "sim"`: the simulator's endpoint (device path, URL or
    # host:port), used instead of the address in the options.
    endpoint: str | None = None
    log: Any = field(default=None)

    def logger(self) -> Any:
        return (
            self.log if self.log is not None else structlog.get_logger().bind(device=self.device_id)
        )


@runtime_checkable
class Driver(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[DriverOptions]]
    # Entry-point name (group `cellctl.simulators`) of this driver's simulator.
    simulator: ClassVar[str]

    def __init__(self, ctx: DriverContext, options: Any) -> None: ...

    def metrics(self) -> Sequence[MetricSpec]:
        """Every metric the device will ever report; complete after connect."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def serve(self) -> None:
        """Run background I/O until the link is lost (raise LinkError) or cancelled."""
        ...

    def status(self) -> DeviceStatus: ...

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        """Run one step to its end. Cancellation means: stop safely, then return or raise."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def stop(self) -> None:
        """Controlled stop of the running step (cancel job on the device)."""
        ...

    async def emergency_stop(self) -> None:
        """Fast controlled stop, out of band, bounded in time. Not a safety function."""
        ...

    async def reset(self) -> None:
        """Leave Aborted/Stopped after an emergency stop or alarm, as the device allows."""
        ...

    async def change_setup(self, to: Setup) -> None:
        """Automatic changeover, or raise NotSupported (an operator does it)."""
        ...


@runtime_checkable
class SupportsPreflight(Protocol):
    """Optional: a driver that can check a program on the device before running it
    (GRBL's `$C` check mode). Raises StepFailed naming the offending line."""

    async def preflight(self, step: Step) -> None: ...


@runtime_checkable
class Simulator(Protocol):
    """A simulated device; `endpoint` is valid between enter and exit."""

    name: ClassVar[str]
    Options: ClassVar[type[SimOptions]]

    def __init__(self, options: Any) -> None: ...

    @property
    def endpoint(self) -> str: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StateTracker:
    """Holds a device's PackML state and emits StateChanged on every real change."""

    def __init__(self, device_id: str, emit: EventSink, initial: DeviceState) -> None:
        self._device_id = device_id
        self._emit = emit
        self.state = initial
        self.reason = ""

    def set(self, state: DeviceState, reason: str = "") -> None:
        if state == self.state and reason == self.reason:
            return
        previous, self.state, self.reason = self.state, state, reason
        if state != previous:
            self._emit(StateChanged(self._device_id, state, previous, reason))
