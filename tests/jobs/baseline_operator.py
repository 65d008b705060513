"""What the baseline dispatcher needs on a job mix: the real job service with
`[scheduler] method = "baseline"` (in-test machines, time_factor 10) and a scripted
operator doing what the baseline leaves to people. It never changes over on its own:

* a bare G-code file it gave to a printer with another material loaded is held by
  pre-flight; the operator loads the file's material and answers `retry`;
* a step naming a setup no device has loaded waits with no request; when nothing
  runs, the operator loads the oldest such step's setup on the first capable device.

Held steps do not keep their printer, so work behind a hold runs meanwhile: with
one printer the baseline groups materials much as the planner does; with several
it spreads work over printers regardless of what is loaded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.conftest import BOUND, gcode, make_cell, printer, running

from cellctl.jobs.dispatch import unmet
from cellctl.jobs.spec import JobSpec
from cellctl.model import StepState

MILL_PROGRAM = "G21 G90\nG0 X1 Y1\nG0 X0 Y0\n"


def mill(setup: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = printer(setup=setup, processes=["mill"], build_volume=None)
    return out


@dataclass
class BaselineRun:
    changeovers: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    holds: int = 0  # pre-flight holds the operator answered

    def seconds(self, per_key: dict[str, int]) -> int:
        return sum(per_key[k] for _, change in self.changeovers for k in change)


async def run_baseline(
    tmp_path: Path,
    devices: dict[str, dict[str, Any]],
    prints: list[str],
    cuts: list[str],
    bound_s: float = BOUND,
) -> BaselineRun:
    """`prints`: one bare G-code job per material; `cuts`: one mill job per tool; the
    work done within `bound_s` (about 1.5 s on an idle machine)."""
    cell = make_cell(tmp_path, devices, scheduler={"method": "baseline"})
    run = BaselineRun()
    async with running(cell) as app:
        jobs = app.jobs
        for d in devices:  # every job in before the first dispatch
            await jobs.set_in_service(d, False, "loading work")
        for i, material in enumerate(prints):
            path = tmp_path / f"print-{i}.gcode"
            path.write_text(gcode(20, material=material))
            spec = {"id": f"print-{i}", "route": [{"process": "print", "program": path.name}]}
            await jobs.submit(JobSpec.model_validate(spec), {path.name: path})
        for i, tool in enumerate(cuts):
            path = tmp_path / f"cut-{i}.nc"
            path.write_text(MILL_PROGRAM)
            step = {"process": "mill", "program": path.name, "setup": {"tool": tool}}
            spec = {"id": f"cut-{i}", "route": [step]}
            await jobs.submit(JobSpec.model_validate(spec), {path.name: path})
        for d in devices:
            await jobs.set_in_service(d, True)

        async def load(device: str, need: dict[str, str]) -> None:
            have = jobs._device_row(device).setup
            change = {k: v for k, v in need.items() if unmet(have, {k: v})}
            if change:
                run.changeovers.append((device, change))
                await jobs.set_setup(device, change, merge=True)

        async with asyncio.timeout(bound_s):
            while any(not j.state.terminal for j in jobs._jobs.values()):
                records = sorted(jobs._jobs.values(), key=lambda j: j.seq)
                steps = [s for j in records for s in j.steps]
                held = [s for s in steps if s.state == StepState.HELD]
                for s in held:
                    assert s.device is not None and s.gcode is not None, s.reason
                    await load(s.device, dict(s.gcode.requirements()))
                    await jobs.answer_hold(s.job_id, s.index, "retry", who="test")
                    run.holds += 1
                busy = any(s.state in (StepState.STARTING, StepState.RUNNING) for s in steps)
                queued = [s for s in steps if s.state == StepState.QUEUED]
                if not held and not busy and queued:
                    s = queued[0]
                    device = next(
                        d for d, c in cell.devices.items() if s.process in c.common.processes
                    )
                    await load(device, dict(s.setup))
                await asyncio.sleep(0.3)
        failed = [j.id for j in jobs._jobs.values() if j.state.value != "done"]
        assert not failed, failed
    return run
