"""The job service's public types: its errors, the answers to a hold, a device's view."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cellctl.errors import CellError
from cellctl.jobs.records import JobRecord
from cellctl.model import DeviceState, StepState


class JobNotFound(CellError):
    """No job has this id."""


class InvalidRequest(CellError):
    """A request that does not fit the job's current state (the message says why)."""


class Repeat(enum.StrEnum):
    """What a submission whose job id is already taken does."""

    SAME = "same"  # the id is the client's idempotency key: the stored job stands
    ENDED = "ended"  # the same job while it is unfinished; once ended, a new `<id>-r<n>`
    ALWAYS = "always"  # a new job `<id>-r<n>` every time (a reprint)


class HoldAction(enum.StrEnum):
    RETRY = "retry"  # run the step again from the start
    RESUME = "resume"  # G-code: run it again from a line (default: after the last acknowledged)
    FAIL = "fail"  # fail the step and its job
    DONE = "done"  # the operator confirms the device finished it


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    processes: tuple[str, ...]
    setup: Mapping[str, str]
    in_service: bool
    note: str
    state: DeviceState
    busy_with: str | None  # step key running on it or reserving it

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "processes": list(self.processes),
            "setup": dict(self.setup),
            "in_service": self.in_service,
            "note": self.note,
            "state": self.state.label,
            "busy_with": self.busy_with,
        }


def job_summary(job: JobRecord) -> dict[str, Any]:
    """A compact JSON-able view (for CLI and telemetry)."""
    done = sum(1 for s in job.steps if s.state == StepState.DONE)
    return {
        "id": job.id,
        "state": job.state.value,
        "reason": job.reason,
        "priority": job.priority,
        "steps_done": done,
        "steps": len(job.steps),
    }
