"""The live planner plans whole routes and steps that reserve devices: a later route step
is a job `after` its predecessor (or released at its expected end), a step reserving a
robot or `@previous` holds those devices in the plan, and a later step's changeover is
asked for while its predecessor still runs. Pure parts with the real planner on a
worker thread; one end to end in the real App (jobs.jobdevice, time_factor 10)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from jobs.conftest import BOUND, gcode, printer, robot, running, wait_for, wait_job
from jobs.test_planned import Clock, cand, planned_once, settings
from jobs.test_planner_live import planner_cell

from cellctl.jobs.dispatch import Candidate, DeviceView, check_assignments
from cellctl.jobs.live_problem import Snapshot, build_problem
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState
from cellctl.planning.model import PREVIOUS


def step(key: str, process: str, setup: dict[str, str], **kw: object) -> Candidate:
    job, _, index = key.partition("/")
    return Candidate(
        key=key,
        job_id=job,
        index=int(index),
        seq=1,
        priority=0,
        process=process,
        setup=setup,
        estimated_s=600.0,
        **kw,  # type: ignore[arg-type]
    )


def test_routes_and_reservations_become_jobs_of_the_problem() -> None:
    now = 1000.0
    devs = {
        "p1": DeviceView("p1", frozenset({"print"}), {"material": "PLA"}, True),
        "p2": DeviceView("p2", frozenset({"print"}), {"material": "PLA"}, False, None, now + 300),
        "arm": DeviceView("arm", frozenset({"tend"}), {}, True),
        "gone": DeviceView("gone", frozenset({"tend"}), {}, False),  # down
    }
    a0 = step("a/0", "print", {"material": "PLA"})
    a1 = step("a/1", "tend", {}, after="a/0", reserves=(PREVIOUS,))
    a2 = step("a/2", "print", {"material": "PETG"}, after="a/1")
    b1 = step("b/1", "tend", {}, after="b/0", ready_at=now + 300, reserves=("p2",))
    tended = step("c/0", "print", {"material": "PLA"}, reserves=("arm",))
    lost = step("d/0", "print", {"material": "PLA"}, reserves=("gone",))
    orphan = step("e/1", "print", {"material": "PLA"}, after="e/0")  # e/0 held: not planned
    problem = build_problem(
        Snapshot(now, (a0, tended, lost), devs, later=(a1, a2, b1, orphan)), settings()
    )
    jobs = {j.id: j for j in problem.jobs}
    assert set(jobs) == {"a/0", "a/1", "a/2", "b/1", "c/0"}
    assert jobs["a/1"].after == ("a/0",) and jobs["a/1"].reserves == (PREVIOUS,)
    assert jobs["a/2"].after == ("a/1",) and jobs["a/2"].release == 0
    assert jobs["b/1"].after == () and jobs["b/1"].release == 300
    assert jobs["b/1"].reserves == ("p2",) and set(jobs["b/1"].durations) == {"arm"}
    assert jobs["c/0"].reserves == ("arm",) and set(jobs["c/0"].durations) == {"p1", "p2"}


async def test_a_later_steps_changeover_is_asked_for_while_its_predecessor_runs() -> None:
    """Print on p1 (running 10 more minutes), then mill with tool T2 on m1 (T1 loaded):
    the mill's changeover is requested now (notice 15 min) and the mill, free meanwhile,
    takes nothing the plan put after it."""
    clock = Clock()
    cfg = settings(notice_s=900)
    d = PlannerDispatcher(lambda: cfg, clock=clock)
    devs = {
        "p1": DeviceView(
            "p1", frozenset({"print"}), {"material": "PLA"}, False, None, clock.t + 600
        ),
        "m1": DeviceView("m1", frozenset({"mill"}), {"tool": "T1"}, True),
    }
    nxt = step("a/1", "mill", {"tool": "T2"}, after="a/0", ready_at=clock.t + 600)
    d.note_later([nxt])
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        await planned_once(d, [], devs)
        assert d.assign([], devs) == []
        task.cancel()
    assert d.current is not None and d.current.plan.sequences["m1"] == ("a/1",)
    [req] = d.announcer.take()
    assert req.device_id == "m1" and req.step_key == "a/1"
    assert req.details["load"] == {"tool": "T2"}
    assert req.details["planned_start"] >= clock.t + 600


async def test_a_step_reserving_a_robot_waits_for_it_and_both_are_planned() -> None:
    """c/0 prints on p1 while the arm tends it; r/0 is the arm's own work. The plan
    holds both; one round never starts both, whatever the plan's order."""
    clock = Clock()
    d = PlannerDispatcher(lambda: settings(), clock=clock)
    devs = {
        "p1": DeviceView("p1", frozenset({"print"}), {"material": "PLA"}, True),
        "arm": DeviceView("arm", frozenset({"tend"}), {}, True),
    }
    tended = cand(1, "PLA", reserves=("arm",))
    own = step("r/0", "tend", {})
    cands = [tended, own]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        await planned_once(d, cands, devs)
        fallbacks = d.stats.fallbacks
        out = d.assign(cands, devs)
        task.cancel()
    live = d.current
    assert live is not None and live.planned == {"j1/0", "r/0"}
    [placed] = [a for a in live.plan.assignments if a.job == "j1/0"]
    assert [r[0] for r in placed.reserved] == ["arm"]
    check_assignments(out, {c.key: c for c in cands}, devs)
    assert len(out) == 1 and d.stats.fallbacks == fallbacks  # by the plan


async def test_routes_with_an_unload_robot_run_by_the_plan(tmp_path: Path) -> None:
    """Four print → unload units (the unload reserves `@previous`): all done by the plan,
    the unloads planned while their prints were still queued, no device ever running two
    steps at once, a printer idle from its print's end until its unload ended."""
    cell = planner_cell(tmp_path, {"p1": printer(), "p2": printer(), "zarm": robot()})
    part = tmp_path / "part.gcode"
    part.write_text(gcode(30))
    spec = JobSpec.model_validate(
        {
            "id": "cycle",
            "quantity": 4,
            "route": [
                {"process": "print", "program": "part.gcode"},
                {
                    "process": "tend",
                    "program": {"kind": "robot", "name": "unload"},
                    "reserves": ["@previous"],
                },
            ],
        }
    )
    async with running(cell) as app:
        planner = app.jobs.dispatcher
        assert isinstance(planner, PlannerDispatcher)
        await app.jobs.submit(spec, {"part.gcode": part})

        def unload_planned_ahead() -> bool:
            live = planner.current
            job = app.jobs._jobs.get("cycle")
            return (
                live is not None
                and job is not None
                and "cycle/3" in live.plan.sequences.get("zarm", ())
                and job.steps[2].state.value in ("queued", "starting", "running")
            )

        await wait_for(unload_planned_ahead, "an unload planned before its print ended", BOUND)
        job = await wait_job(app, "cycle", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert job.state == JobState.DONE, job.reason
    busy: dict[str, list[tuple[float, float]]] = {}
    for unit in range(4):
        pr, tend = job.steps[2 * unit], job.steps[2 * unit + 1]
        assert pr.device in ("p1", "p2") and tend.device == "zarm"
        assert tend.reserved == (pr.device,)
        busy.setdefault(str(pr.device), []).append((pr.started or 0, tend.ended or 0))
        busy.setdefault("zarm", []).append((tend.started or 0, tend.ended or 0))
    for spans in busy.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
