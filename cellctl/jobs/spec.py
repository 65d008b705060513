"""What a client submits: a job description, validated strictly.

The same model reads a TOML job file from the hot folder, a JSON command
(the MQTT issue) and a Python call. Programs are named by file (relative to
the job file) or by content address (`sha256:<hex>`, already stored).
"""

from __future__ import annotations

import re
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cellctl.errors import CellError
from cellctl.jobs.gcode import format_number
from cellctl.model import MetricValue, ProgramKind

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PREVIOUS = "@previous"  # in `reserves`: the device that ran the previous step of the unit
SHA_REF = re.compile(r"^sha256:([0-9a-f]{64})$")
GCODE_SUFFIXES = (".gcode", ".gco", ".g", ".nc", ".ngc")


class JobRejected(CellError):
    """A submission that cannot become a job; the message says why. Nothing was stored."""


class NoSpace(JobRejected):
    """Refused for lack of disk space (below `[store] min_free_mb`, or the disk is full).
    Not the submission's fault: the same submission is accepted once space returns."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _setup_values(v: Any) -> Any:
    # TOML and JSON write `nozzle = 0.4`: setups compare as text, numbers normalised.
    if isinstance(v, dict):
        out = {}
        for key, value in v.items():
            if isinstance(value, bool):
                out[key] = str(value).lower()
            elif isinstance(value, int | float):
                out[key] = format_number(float(value))
            else:
                out[key] = value
        return out
    return v


class ProgramSpec(_Strict):
    kind: ProgramKind
    file: str | None = None  # G-code: a file name, or sha256:<hex>
    name: str = ""  # robot program / recipe
    parameters: dict[str, MetricValue] = Field(default_factory=dict)


class StepSpec(_Strict):
    process: str = Field(min_length=1, max_length=64)
    # A string is a G-code file; a table names another kind of program.
    program: str | ProgramSpec | None = None
    setup: dict[str, str] = Field(default_factory=dict)
    reserves: tuple[str, ...] = ()
    estimated_s: float | None = Field(default=None, ge=0)
    # Only this device may run the step (it must offer the process); None: any that can.
    device: str | None = Field(default=None, min_length=1, max_length=64)

    _norm = field_validator("setup", mode="before")(_setup_values)

    def program_spec(self) -> ProgramSpec:
        if self.program is None:
            return ProgramSpec(kind=ProgramKind.NONE)
        if isinstance(self.program, str):
            return ProgramSpec(kind=ProgramKind.GCODE, file=self.program)
        return self.program


class JobSpec(_Strict):
    id: str = Field(pattern=JOB_ID_PATTERN)
    quantity: int = Field(default=1, ge=1, le=10_000)
    priority: int = Field(default=0, ge=-1000, le=1000)
    due: datetime | None = None
    route: tuple[StepSpec, ...] = Field(min_length=1, max_length=100)

    def program_files(self) -> list[str]:
        """G-code file names the job needs (not sha256 references), in route order."""
        out = []
        for step in self.route:
            spec = step.program_spec()
            if spec.kind == ProgramKind.GCODE:
                if not spec.file:
                    raise JobRejected(f"step {step.process!r}: a G-code program needs a file")
                if not SHA_REF.match(spec.file) and spec.file not in out:
                    out.append(spec.file)
        return out


def describe_validation(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {loc}: {err['msg']}")
    return "\n".join(lines)


# A job file's due date relative to the file (`due = "+2h"`): a shipped job mix
# (configs/demo-jobs/) keeps meaning something whenever it is dropped.
RELATIVE_DUE = re.compile(r"^\+(\d+(?:\.\d+)?)([mhd])$")
DUE_UNIT_S = {"m": 60, "h": 3600, "d": 86400}


def parse_job_toml(
    text: str, where: str, default_id: str, received: float | None = None
) -> JobSpec:
    """A TOML job file → JobSpec; `default_id` when the file names none. Raises JobRejected.
    A relative `due` ("+90m", "+2h", "+1d") counts from `received` (the hot folder: the
    file's mtime, so that reading it again gives the same job), else from now."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobRejected(f"{where}: TOML syntax error: {exc}") from None
    data.setdefault("id", default_id)
    due = data.get("due")
    if isinstance(due, str) and (m := RELATIVE_DUE.match(due.strip())):
        base = time.time() if received is None else received
        at = base + float(m.group(1)) * DUE_UNIT_S[m.group(2)]
        data["due"] = datetime.fromtimestamp(round(at), UTC)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobRejected(describe_validation(exc, where)) from None


def safe_program_path(base: Path, name: str) -> Path:
    """A program file named by a job file: relative, inside the job file's folder."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise JobRejected(f"program {name!r}: must be a relative path inside the hot folder")
    return base / p
