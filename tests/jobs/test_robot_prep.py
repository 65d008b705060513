"""Robot preparations (`[scheduler.preparation.material.robot]`): ahead of a manual
PETG changeover on a printer, a robot fetches the spool, as a job step the planner
plans (in-test machines, time_factor 10); a withdrawn changeover cancels the fetch
that had not run; off shift nothing is fetched."""

from __future__ import annotations

import time
from pathlib import Path

from jobs.conftest import gcode, printer, robot, running, wait_for, wait_job
from jobs.test_planner_live import next_request, planner_cell
from jobs.test_preparation import off_shift_calendar

from cellctl.jobs import robot_prep
from cellctl.jobs.changeover import Needed
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState, ProgramKind
from cellctl.scheduler_config import SchedulerSection

FETCH = {"material": {"robot": {"program": "fetch-spool", "estimated_s": 5}}}
PREP = "prep.petg.0.material"


async def submit_petg(app: object, tmp_path: Path) -> None:
    path = tmp_path / "petg.gcode"
    path.write_text(gcode(10, material="PETG"))
    spec = {"id": "petg", "route": [{"process": "print", "program": path.name}]}
    await app.jobs.submit(JobSpec.model_validate(spec), {path.name: path})  # type: ignore[attr-defined]


async def test_a_robot_fetches_the_spool_ahead_of_the_changeover(tmp_path: Path) -> None:
    cell = planner_cell(tmp_path, {"p1": printer(), "r1": robot()}, preparation=FETCH)
    async with running(cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        await submit_petg(app, tmp_path)
        req = await next_request(events)
        assert req.details["load"] == {"material": "PETG"}
        fetched = await wait_job(app, PREP, JobState.DONE, JobState.FAILED, JobState.HELD)
        assert fetched.state == JobState.DONE, fetched.reason
        step = fetched.steps[0]
        assert step.device == "r1" and step.program_kind == ProgramKind.ROBOT_PROGRAM
        assert step.program_name == "fetch-spool"
        # The operator loads the fetched spool; the print runs.
        await app.jobs.set_setup("p1", {"material": "PETG"}, merge=True)
        done = await wait_job(app, "petg", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        assert sorted(app.jobs._jobs) == ["petg", PREP]  # one fetch, not one per round


async def test_a_withdrawn_changeover_cancels_a_fetch_not_run(tmp_path: Path) -> None:
    cell = planner_cell(tmp_path, {"p1": printer(), "r1": robot()}, preparation=FETCH)
    async with running(cell) as app:
        await app.jobs.set_in_service("r1", False, "busy elsewhere")  # the fetch waits
        events = app.bus.subscribe("test", lossless=True)
        await submit_petg(app, tmp_path)
        await next_request(events)
        await wait_for(lambda: PREP in app.jobs._jobs, "the fetch submitted")
        assert app.jobs._jobs[PREP].state == JobState.QUEUED
        await app.jobs.cancel("petg")
        gone = await next_request(events)
        assert gone.details["withdrawn"] is True
        job = await wait_job(app, PREP, JobState.CANCELLED, JobState.DONE)
        assert job.state == JobState.CANCELLED


def test_off_shift_nothing_is_fetched() -> None:
    from jobs.test_planned import cand

    now = time.time()
    need = Needed("p1", cand(1, "PETG"), {"material": "PLA"}, now + 60, now, None)
    on = SchedulerSection.model_validate({"preparation": FETCH})
    specs = robot_prep.wanted({"p1": need}, on, now)
    assert list(specs) == ["prep.j1.0.material"]
    route = specs["prep.j1.0.material"].route[0]
    assert route.process == "tend" and route.estimated_s == 5
    off = SchedulerSection.model_validate(
        {"preparation": FETCH, "calendar": off_shift_calendar(now)}
    )
    assert robot_prep.wanted({"p1": need}, off, now) == {}
    far = Needed("p1", cand(1, "PETG"), {"material": "PLA"}, now + 9000, now + 8000, None)
    assert robot_prep.wanted({"p1": far}, on, now) == {}  # beyond lead_s
