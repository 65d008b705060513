"""The commands the cell takes over MQTT, as payload models: one per command name
(`COMMANDS`), each validated before anything acts on it. `cellctl.commands` handles
them; `python -m cellctl.telemetry.schemas` writes their JSON Schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cellctl import maintenance
from cellctl.access import COMMAND_NAMES, USER_PATTERN
from cellctl.errors import CellError
from cellctl.model import RequestKind

Name = Annotated[str, Field(min_length=1, max_length=128)]


class Rejected(CellError):
    """A command that cannot be carried out; the message is the reply's reason."""


# --- schemas ---------------------------------------------------------------


class Command(BaseModel):
    """Fields every command has. Unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    # Echoed in the reply: the correlation on MQTT 3.1.1. On a state-changing command
    # it also makes a replay harmless: the first reply answers it (cellctl.command_ids).
    id: Annotated[str, Field(max_length=128)] | None = None
    # Sent by a front end (permission `frontend`, cellctl.access) for a user it verified
    # itself: that user's roles decide, and the audit names both.
    on_behalf_of: Annotated[str, Field(pattern=USER_PATTERN)] | None = None


class DeviceCommand(Command):
    device: Name


class Pause(DeviceCommand):
    """Pause the running step (PackML Hold / Suspend, as the device does it)."""


class Resume(DeviceCommand):
    """Resume a paused step."""


class Stop(DeviceCommand):
    """Controlled stop of the running step."""


class Reset(DeviceCommand):
    """Leave Stopped/Aborted after an emergency stop or alarm."""


class EmergencyStop(Command):
    """Fast controlled stop of every device. Not a safety function."""

    reason: Annotated[str, Field(max_length=500)] = ""


class OutOfService(DeviceCommand):
    """The scheduler gives the device no more work until it is back in service."""

    reason: Annotated[str, Field(max_length=500)] = ""


class IntoService(DeviceCommand):
    """Back into service."""


class StepSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    process: Name
    # At most one of: G-code text, a stored program (sha256:<hex>), a robot program,
    # a PLC recipe.
    gcode: Annotated[str, Field(max_length=50_000_000)] | None = None
    file: Name | None = None
    program: Name | None = None
    recipe: Name | None = None
    # The program's file name for `gcode` (kept with the step, as a job file names it).
    name: Name | None = None
    parameters: dict[str, bool | int | float | str] = Field(default_factory=dict)
    setup: dict[str, str] = Field(default_factory=dict)
    reserves: Annotated[list[Name], Field(max_length=16)] = Field(default_factory=list)
    device: Name | None = None
    estimated_s: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_program(self) -> StepSpec:
        kinds = ("gcode", "file", "program", "recipe")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"a step has at most one of {', '.join(kinds)}; got {given}")
        if self.name is not None:
            if self.gcode is None:
                raise ValueError("name goes with gcode")
            if self.name.startswith("sha256:"):
                raise ValueError("name must not look like a stored program (sha256:…)")
        return self


class Submit(Command):
    """Submit a job. Submitting a job id twice returns the existing job, unless `repeat`
    says otherwise: "ended" makes a new job `<job>-r<n>` once that job has ended,
    "always" makes one every time (a reprint)."""

    job: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=1000)]
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1
    due: datetime | None = None
    repeat: Literal["same", "ended", "always"] = "same"


class Cancel(Command):
    job: Name
    reason: Annotated[str, Field(max_length=500)] = ""


class SetPriority(Command):
    """Change an unfinished job's priority (larger runs first): its steps not yet
    started are dispatched by it, and a planning cell re-plans."""

    job: Name
    priority: Annotated[int, Field(ge=-1000, le=1000)]


class Reprint(Command):
    """Run a job again, in any state: a new job `<first id>-r<n>` with its programs."""

    job: Name


class Answer(DeviceCommand):
    """Answer an operator request: material loaded, bed cleared, tool changed …"""

    kind: RequestKind
    step: Name | None = None
    note: Annotated[str, Field(max_length=500)] = ""
    # What was actually loaded (merged into the device's stored setup); a `changeover`
    # answer must carry it. A different setup than asked makes the planner re-plan.
    setup: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] | None
    ) = None


class SetSetup(DeviceCommand):
    """Tell the cell what is now loaded on a device (material, nozzle, tool …)."""

    setup: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]]
    # True: change only the keys given; false: `setup` replaces what was recorded.
    merge: bool = False


class ResumeFrom(Command):
    """Resume a held step from a chosen G-code line."""

    job: Name
    step: Annotated[int, Field(ge=0)]
    line: Annotated[int, Field(ge=0)]


class AnswerHold(Command):
    """Answer a held step: retry it, resume it from a line, fail it, or confirm it done.

    `attempt` (the step's attempt shown with the hold) makes a stale answer a
    rejection instead of answering a newer hold of the same step."""

    job: Name
    step: Annotated[int, Field(ge=0)]
    action: Literal["retry", "resume", "fail", "done"]
    line: Annotated[int, Field(ge=1)] | None = None
    attempt: Annotated[int, Field(ge=0)] | None = None


class ListJobs(Command):
    """The job queue, for `cellctl jobs` and `cellctl status`; with `job`, that one job
    and its transitions. A page at a time, in submission order: `limit` jobs (default
    [commands] jobs_page) after the job whose `seq` is `after`; the reply's `page` says
    whether more follow and which `after` asks for them."""

    job: Name | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    after: Annotated[int, Field(ge=0)] | None = None


class PutProgram(Command):
    """One chunk of a program upload (docs/mqtt.md, "Large programs"): chunks in any
    order, resent at will; the program is stored once every byte is there and the
    whole file's sha256 matches, then `submit` names it `file: "sha256:<hex>"`."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    # Base64 of the chunk's bytes.
    data: str
    name: Annotated[str, Field(max_length=256)] | None = None


class ListPrograms(Command):
    """The cell's program store (`sha256:<hex>` a submit may name): newest first, a page
    at a time: `limit` programs after the cursor `after` (the reply's `page.after`)."""

    limit: Annotated[int, Field(ge=1)] | None = None
    after: Annotated[str, Field(max_length=128)] | None = None


# Commands that change nothing: answered without an audit row (docs/mqtt.md).
READ_ONLY = frozenset({"jobs", "devices", "programs"})


class ListDevices(Command):
    """Every device: driver, state, busy or not, in service, what is loaded, its step."""


class Maintain(DeviceCommand):
    """Privileged lines (EEPROM, steps/mm, GRBL `$` settings …) sent to an idle device and
    audited; never part of a job (cellctl/maintenance.py). `reason` is recorded with them."""

    lines: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=maintenance.MAX_LINE)]],
        Field(min_length=1, max_length=maintenance.MAX_LINES),
    ]
    reason: Annotated[str, Field(min_length=1, max_length=500)]

    @field_validator("lines")
    @classmethod
    def _printable(cls, v: list[str]) -> list[str]:
        for i, line in enumerate(v, 1):
            if not line.isascii() or not line.isprintable() or not line.strip():
                raise ValueError(f"line {i}: one printable ASCII line, no newline or control bytes")
        return v


COMMANDS: dict[str, type[Command]] = {
    "pause": Pause,
    "resume": Resume,
    "stop": Stop,
    "reset": Reset,
    "estop": EmergencyStop,
    "out_of_service": OutOfService,
    "into_service": IntoService,
    "submit": Submit,
    "cancel": Cancel,
    "reprint": Reprint,
    "answer": Answer,
    "set_setup": SetSetup,
    "resume_from": ResumeFrom,
    "answer_hold": AnswerHold,
    "jobs": ListJobs,
    "put_program": PutProgram,
    "maintain": Maintain,
    "devices": ListDevices,
    "set_priority": SetPriority,
    "programs": ListPrograms,
}
assert set(COMMANDS) == COMMAND_NAMES, "cellctl.access.COMMAND_NAMES is out of date"
