"""What the snapshot needs from the job service and the supervisor, behind small contracts.

The job service publishes job and step transitions on the bus, but a setup an
operator recorded and the steps held before this run started are only in its
memory: `CellFacts` asks for them (at start, after each step change and after
an accepted `set_setup`). `JobFacts` is the job service's side of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cellctl.model import OperatorRequest, RequestKind, StepState
from cellctl.telemetry.snapshot import HeldStep

if TYPE_CHECKING:
    from cellctl.jobs.service import JobService


@dataclass(frozen=True, slots=True)
class Facts:
    setups: Mapping[str, Mapping[str, str]]
    held: Sequence[HeldStep]
    requests: Sequence[OperatorRequest]  # one per held step, as the job service asks


class CellFacts(Protocol):
    async def facts(self) -> Facts: ...


class JobFacts:
    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    async def facts(self) -> Facts:
        devices = await self._jobs.devices()
        held: list[HeldStep] = []
        requests: list[OperatorRequest] = []
        for job in await self._jobs.list_jobs():
            for s in job.steps:
                if s.state != StepState.HELD:
                    continue
                device = s.device or s.pinned
                held.append(HeldStep(s.key, device, s.reason, s.attempt, s.ended or 0.0))
                kind = (
                    RequestKind.LOAD_MATERIAL
                    if s.reason.startswith("pre-flight: material")
                    else RequestKind.ACKNOWLEDGE
                )
                requests.append(
                    OperatorRequest(
                        device or "",
                        kind,
                        f"step {s.key} held: {s.reason}",
                        s.key,
                        {"job_id": s.job_id, "index": s.index, "attempt": s.attempt},
                    )
                )
        return Facts({d: dict(i.setup) for d, i in devices.items()}, held, requests)
