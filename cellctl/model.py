"""Value types and enums shared by every part of cellctl and every driver.

Drivers import only this module, `cellctl.driver` and `cellctl.errors`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DeviceState(enum.IntEnum):
    """PackML states (ISA-TR88.00.02) with their standard numbers, plus UNAVAILABLE.

    UNAVAILABLE (0) is cellctl's own: the device is not connected, so nothing
    is known about its PackML state.
    """

    UNAVAILABLE = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17

    @property
    def label(self) -> str:
        return self.name.lower()


class DeviceMode(enum.IntEnum):
    """PackML unit modes; a changeover runs in SETUP (OPC UA Machinery's term)."""

    PRODUCTION = 1
    MAINTENANCE = 2
    MANUAL = 3
    SETUP = 4


class MetricType(enum.StrEnum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STRING = "string"


class Quality(enum.StrEnum):
    """OPC-style quality of a sample: a stale value is never published as good."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric a device will report: declared up front so subscribers can be told."""

    name: str
    type: MetricType
    unit: str = ""
    description: str = ""
    writable: bool = False


MetricValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: MetricValue
    timestamp: float = field(default_factory=time.time)  # source time, Unix seconds
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A driver's latest snapshot; reading it does no I/O."""

    state: DeviceState
    mode: DeviceMode = DeviceMode.PRODUCTION
    detail: str = ""
    setup: Mapping[str, str] = field(default_factory=dict)


class ProgramKind(enum.StrEnum):
    GCODE = "gcode"  # a file streamed line by line (Marlin, GRBL)
    ROBOT_PROGRAM = "robot"  # a program number or name run by a robot controller
    PLC_RECIPE = "recipe"  # a recipe (number + parameters) run by a PLC handshake
    NONE = "none"  # a step that only reserves devices (manual work)


@dataclass(frozen=True, slots=True)
class Program:
    kind: ProgramKind
    path: Path | None = None  # G-code file (content-addressed in the store)
    sha256: str | None = None
    name: str = ""  # robot program / recipe name or number
    parameters: Mapping[str, MetricValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """One job step as a driver sees it."""

    job_id: str
    index: int
    process: str
    program: Program
    setup: Mapping[str, str] = field(default_factory=dict)
    reserves: tuple[str, ...] = ()
    estimated_s: float | None = None
    start_line: int = 0  # G-code: resume from this line (0: from the start)

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.index}"


class StepOutcome(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"  # the device or program said no; the reason is in `message`
    INTERRUPTED = "interrupted"  # link lost / daemon stopped: may be resumed
    CANCELLED = "cancelled"  # stopped on request


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: StepOutcome
    message: str = ""
    last_line: int | None = None  # G-code: last line the firmware acknowledged


@dataclass(frozen=True, slots=True)
class Progress:
    """Progress of the running step; fields a driver cannot know stay None."""

    fraction: float | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    lines_done: int | None = None
    last_acked_line: int | None = None
    remaining_s: float | None = None


Setup = Mapping[str, str]

# --- events: drivers and the supervisor emit these into the app's event bus ---


@dataclass(frozen=True, slots=True)
class StateChanged:
    device_id: str
    state: DeviceState
    previous: DeviceState
    reason: str = ""
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Samples:
    device_id: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class Alarm:
    device_id: str
    code: str
    text: str
    active: bool = True
    timestamp: float = field(default_factory=time.time)


class RequestKind(enum.StrEnum):
    LOAD_MATERIAL = "load_material"
    CLEAR_BED = "clear_bed"
    CHANGE_TOOL = "change_tool"
    CHANGEOVER = "changeover"  # the live planner asks for a setup change ahead of time
    ACKNOWLEDGE = "acknowledge"  # generic "operator, please confirm" (M0, paused for user)


@dataclass(frozen=True, slots=True)
class OperatorRequest:
    device_id: str
    kind: RequestKind
    text: str
    step_key: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class StepProgress:
    device_id: str
    step_key: str
    progress: Progress
    timestamp: float = field(default_factory=time.time)


# --- jobs: the job service publishes these on every stored transition ---


class JobState(enum.StrEnum):
    """A job's state; allowed transitions are in cellctl.jobs.states."""

    QUEUED = "queued"  # accepted and stored; no step started yet
    ACTIVE = "active"  # some step started or done
    HELD = "held"  # a step waits for an operator
    DONE = "done"
    FAILED = "failed"  # the reason says which step and why
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class StepState(enum.StrEnum):
    """A job step's state; allowed transitions are in cellctl.jobs.states."""

    QUEUED = "queued"  # waits for its turn in the route and for a device
    STARTING = "starting"  # given to a device: pre-flight checks run, nothing moved yet
    RUNNING = "running"
    HELD = "held"  # waits for an operator: retry, resume from a line, fail (or confirm done)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (StepState.DONE, StepState.FAILED, StepState.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobChanged:
    job_id: str
    state: JobState
    previous: JobState | None  # None: the job was just accepted
    reason: str = ""
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class StepChanged:
    job_id: str
    index: int
    state: StepState
    previous: StepState
    device_id: str | None = None
    reason: str = ""
    attempt: int = 0
    timestamp: float = field(default_factory=time.time)

    @property
    def step_key(self) -> str:
        return f"{self.job_id}/{self.index}"


Event = StateChanged | Samples | Alarm | OperatorRequest | StepProgress | JobChanged | StepChanged
