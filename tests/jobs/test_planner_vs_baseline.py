"""The same mix through both dispatchers, in-process (in-test machines, time_factor
10), each with a scripted operator: the planner's changeover minutes are below what
the baseline needs. Two PLA printers and two PETG files: the baseline gives one file
to each printer (both held by pre-flight, both changed over), the planner asks for
PETG on one of them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jobs.baseline_operator import run_baseline
from jobs.conftest import gcode, printer, running, wait_job
from jobs.test_planner_live import next_request, planner_cell

from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState
from cellctl.scheduler_config import SchedulerSection

MIX = ["PETG", "PETG", "PLA"]


async def test_planner_changes_over_less_than_the_baseline(tmp_path: Path) -> None:
    devices = {"p1": printer(), "p2": printer()}
    seconds = {"material": SchedulerSection().key_change("material").seconds}
    baseline = await run_baseline(tmp_path / "baseline", devices, MIX, [])
    assert baseline.holds >= 2  # each PETG file held once by pre-flight

    # Asked for when due (the printer free): this operator loads at once, as told.
    cell = planner_cell(tmp_path, devices, notice_s=0)
    answered: list[tuple[str, dict[str, str]]] = []
    async with running(cell) as app:
        for d in devices:
            await app.jobs.set_in_service(d, False, "loading work")
        events = app.bus.subscribe("test", lossless=True)
        for i, material in enumerate(MIX):
            path = tmp_path / f"print-{i}.gcode"
            path.write_text(gcode(20, material=material))
            spec = {"id": f"print-{i}", "route": [{"process": "print", "program": path.name}]}
            await app.jobs.submit(JobSpec.model_validate(spec), {path.name: path})
        for d in devices:
            await app.jobs.set_in_service(d, True)

        async def operator() -> None:
            while True:
                req = await next_request(events)
                done = (req.device_id, dict(req.details["load"]))
                if req.details["withdrawn"] or (req.details["updated"] and done in answered):
                    continue
                answered.append(done)
                await app.jobs.set_setup(req.device_id, req.details["load"], merge=True)

        async with asyncio.TaskGroup() as tg:
            op = tg.create_task(operator())
            for i in range(len(MIX)):
                job = await wait_job(app, f"print-{i}", JobState.DONE, JobState.FAILED)
                assert job.state == JobState.DONE, job.reason
            op.cancel()
    planned = sum(seconds[k] for _, change in answered for k in change)
    print(
        f"changeover minutes: planner {planned / 60:g} ({len(answered)} changeovers), "
        f"baseline {baseline.seconds(seconds) / 60:g} ({len(baseline.changeovers)}, "
        f"{baseline.holds} pre-flight holds)"
    )
    assert len(answered) == 1 and answered[0][1] == {"material": "PETG"}
    assert planned < baseline.seconds(seconds)
