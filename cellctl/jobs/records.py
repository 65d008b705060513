"""Jobs and steps as the service holds them: immutable snapshots of stored rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellctl.jobs.gcode import GcodeInfo
from cellctl.model import JobState, Program, ProgramKind, Step, StepState


@dataclass(frozen=True)
class StepRecord:
    job_id: str
    index: int
    unit: int  # which of the job's `quantity` units
    position: int  # place in the route
    process: str
    program_kind: ProgramKind
    program_sha256: str | None = None
    program_file: str = ""
    program_name: str = ""
    program_parameters: Mapping[str, Any] = field(default_factory=dict)
    gcode: GcodeInfo | None = None
    setup: Mapping[str, str] = field(default_factory=dict)
    reserves: tuple[str, ...] = ()
    estimated_s: float | None = None
    state: StepState = StepState.QUEUED
    reason: str = ""
    device: str | None = None
    reserved: tuple[str, ...] = ()
    # Set when a step stops part-way (held after running): the device it must resume on.
    # While the step is held or queued, that device takes no other work.
    pinned: str | None = None
    # The one device the submission asked for (StepSpec.device); None: any capable one.
    target: str | None = None
    attempt: int = 0
    start_line: int = 0
    last_acked_line: int | None = None
    ran_sha256: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.index}"

    def replace(self, **changes: Any) -> StepRecord:
        return dataclasses.replace(self, **changes)

    def to_step(self, program_path: Path | None) -> Step:
        """The driver's view of this step."""
        program = Program(
            kind=self.program_kind,
            path=program_path,
            sha256=self.program_sha256,
            name=self.program_name,
            parameters=dict(self.program_parameters),
        )
        return Step(
            job_id=self.job_id,
            index=self.index,
            process=self.process,
            program=program,
            setup=dict(self.setup),
            reserves=self.reserved,
            estimated_s=self.estimated_s,
            start_line=self.start_line,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "unit": self.unit,
            "position": self.position,
            "process": self.process,
            "program": {
                "kind": self.program_kind.value,
                "sha256": self.program_sha256,
                "file": self.program_file,
                "name": self.program_name,
                "parameters": dict(self.program_parameters),
            },
            "setup": dict(self.setup),
            "reserves": list(self.reserves),
            "estimated_s": self.estimated_s,
            "state": self.state.value,
            "reason": self.reason,
            "device": self.device,
            "pinned": self.pinned,
            "target": self.target,
            "attempt": self.attempt,
            "start_line": self.start_line,
            "last_acked_line": self.last_acked_line,
            "ran_sha256": self.ran_sha256,
            "started": self.started,
            "ended": self.ended,
        }


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int
    quantity: int
    priority: int
    due: float | None
    source: str
    state: JobState
    reason: str
    created: float
    updated: float
    steps: tuple[StepRecord, ...]
    cancel_requested: bool = False
    spec: str = ""  # the submission as stored (JSON)
    family: str | None = None  # a reprint: the first job's id (this is `<family>-r<n>`)
    drop: str | None = None  # hot folder: the signature of the file it came from

    @property
    def root(self) -> str:
        """The first job of its reprints (itself when it is no reprint)."""
        return self.family or self.id

    def replace(self, **changes: Any) -> JobRecord:
        return dataclasses.replace(self, **changes)

    def step(self, index: int) -> StepRecord:
        return self.steps[index]

    @property
    def route_length(self) -> int:
        return len(self.steps) // self.quantity

    def predecessor(self, step: StepRecord) -> StepRecord | None:
        return None if step.position == 0 else self.steps[step.index - 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "quantity": self.quantity,
            "priority": self.priority,
            "due": self.due,
            "source": self.source,
            "reprint_of": self.family,
            "state": self.state.value,
            "reason": self.reason,
            "created": self.created,
            "updated": self.updated,
            "steps": [s.as_dict() for s in self.steps],
        }
