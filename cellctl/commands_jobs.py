"""The command layer's `JobService` protocol, served by cellctl.jobs.JobService.

MQTT job commands arrive as `cellctl.commands` models; this bridge turns them
into the job service's calls (which return only after the store committed)
and its records into JSON-ready replies.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellctl.command_payloads import Answer, AnswerHold, Submit
from cellctl.errors import CellError
from cellctl.jobs.service import JobService, Repeat
from cellctl.jobs.spec import JobSpec, ProgramSpec, StepSpec
from cellctl.model import ProgramKind, RequestKind, StepState

# Jobs serialised for a `jobs` page between two turns of the event loop.
PAGE_SLICE = 20


def _json(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(obj, default=str))
    return out


class JobBridge:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def submit(self, cmd: Submit) -> Mapping[str, Any]:
        with tempfile.TemporaryDirectory(prefix="cellctl-submit-") as tmp:
            files: dict[str, Path] = {}
            texts: dict[str, str] = {}
            route = []
            for i, s in enumerate(cmd.steps):
                program: str | ProgramSpec | None = None
                if s.gcode is not None:
                    name = s.name or f"{cmd.job}-{i}.gcode"
                    if texts.setdefault(name, s.gcode) != s.gcode:
                        raise CellError(f"step {i}: program {name!r} is given twice, differently")
                    if name not in files:
                        # Named by index on disk: the program name is a label, not a path.
                        files[name] = Path(tmp) / f"{i}.gcode"
                        await asyncio.to_thread(files[name].write_bytes, s.gcode.encode())
                    program = name
                elif s.file is not None:
                    program = s.file  # sha256:<hex> of a program already stored
                elif s.program is not None:
                    program = ProgramSpec(
                        kind=ProgramKind.ROBOT_PROGRAM, name=s.program, parameters=s.parameters
                    )
                elif s.recipe is not None:
                    program = ProgramSpec(
                        kind=ProgramKind.PLC_RECIPE, name=s.recipe, parameters=s.parameters
                    )
                route.append(
                    StepSpec(
                        process=s.process,
                        program=program,
                        setup=s.setup,
                        reserves=tuple(s.reserves),
                        estimated_s=s.estimated_s,
                        device=s.device,
                    )
                )
            try:
                spec = JobSpec(
                    id=cmd.job,
                    priority=cmd.priority,
                    quantity=cmd.quantity,
                    due=cmd.due,
                    route=tuple(route),
                )
            except ValueError as exc:
                raise CellError(f"invalid job: {exc}") from None
            record = await self.jobs.submit(spec, files, source="mqtt", repeat=Repeat(cmd.repeat))
        return _json(record.as_dict())

    async def reprint(self, job_id: str) -> Mapping[str, Any]:
        return _json((await self.jobs.reprint(job_id, source="mqtt")).as_dict())

    async def set_priority(self, job_id: str, priority: int) -> Mapping[str, Any]:
        return _json((await self.jobs.set_priority(job_id, priority, who="MQTT")).as_dict())

    async def cancel(self, job_id: str, reason: str) -> Mapping[str, Any]:
        record = await self.jobs.cancel(job_id, reason or "cancelled over MQTT")
        return _json(record.as_dict())

    async def answer(self, cmd: Answer) -> Mapping[str, Any]:
        """Confirms the operator did what the held step on `device` asked: the step retries.

        With `setup{}` (a changeover's answer) it first records what was loaded; a
        `changeover` answer, or one with no held step on the device, returns the device."""
        if cmd.kind == RequestKind.CLEAR_BED and self.jobs.bed_uncleared(cmd.device):
            info = await self.jobs.confirm_bed_clear(cmd.device, who="operator over MQTT")
            return _json(info.as_dict())
        if cmd.kind == RequestKind.CLEAR_BED and cmd.step is None:
            if not await self._has_held(cmd.device):
                raise CellError(
                    f"the bed of {cmd.device} is not waiting to be cleared "
                    "(and no step is held on it)"
                )
        if cmd.kind == RequestKind.CHANGEOVER and cmd.setup is None:
            raise CellError("a changeover answer needs setup{}: what was loaded")
        if cmd.setup is not None:
            info = await self.jobs.set_setup(cmd.device, cmd.setup, merge=True)
            if cmd.kind == RequestKind.CHANGEOVER or (
                cmd.step is None and not await self._has_held(cmd.device)
            ):
                return _json(info.as_dict())
        job_id, index = await self._held_step(cmd.device, cmd.step)
        record = await self.jobs.answer_hold(job_id, index, "retry", who="operator over MQTT")
        return _json(record.as_dict())

    async def _has_held(self, device: str) -> bool:
        return any(
            s.state == StepState.HELD and device in (s.device, s.pinned)
            for job in await self.jobs.list_jobs()
            for s in job.steps
        )

    async def _held_step(self, device: str, step: str | None) -> tuple[str, int]:
        if step is not None:
            job_id, _, index = step.rpartition("/")
            if not job_id or not index.isdigit():
                raise CellError(f"step must look like <job>/<index>, got {step!r}")
            return job_id, int(index)
        for job in await self.jobs.list_jobs():
            for s in job.steps:
                if s.state == StepState.HELD and (s.device == device or s.pinned == device):
                    return job.id, s.index
        raise CellError(f"no step is held on device {device!r}")

    async def set_setup(
        self, device_id: str, setup: Mapping[str, str], merge: bool
    ) -> Mapping[str, Any]:
        return _json((await self.jobs.set_setup(device_id, setup, merge=merge)).as_dict())

    async def list_devices(self) -> dict[str, Mapping[str, Any]]:
        return {d: _json(info.as_dict()) for d, info in (await self.jobs.devices()).items()}

    async def set_in_service(self, device_id: str, in_service: bool, note: str) -> None:
        await self.jobs.set_in_service(device_id, in_service, note)

    async def resume_from(self, job_id: str, step: int, line: int) -> Mapping[str, Any]:
        record = await self.jobs.answer_hold(job_id, step, "resume", line=line, who="MQTT")
        return _json(record.as_dict())

    async def answer_hold(self, cmd: AnswerHold) -> Mapping[str, Any]:
        record = await self.jobs.answer_hold(
            cmd.job, cmd.step, cmd.action, line=cmd.line, attempt=cmd.attempt, who="MQTT"
        )
        return _json(record.as_dict())

    async def list_jobs(
        self, job_id: str | None, limit: int | None = None, after: int | None = None
    ) -> list[Mapping[str, Any]]:
        if job_id is None:
            jobs = await self.jobs.list_jobs()
            if after is not None:
                jobs = [j for j in jobs if j.seq > after]
            if limit is not None:
                jobs = jobs[:limit]  # cut before serialising: a page costs its own size
            page: list[Mapping[str, Any]] = []
            for i, j in enumerate(jobs):
                if i and not i % PAGE_SLICE:
                    # A page of 100 took 80 ms on the loop under a command flood: in
                    # slices, an emergency stop's device writes go out in between.
                    await asyncio.sleep(0)
                page.append(_json(j.as_dict()))
            return page
        one = {**(await self.jobs.get(job_id)).as_dict()}
        one["transitions"] = await self.jobs.transitions(job_id)
        return [_json(one)]
