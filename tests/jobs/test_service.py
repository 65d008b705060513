"""The job service end to end in one process: the real App, store, supervisor and
the in-test machine (jobs.jobdevice) behind the driver contract."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from jobs.conftest import gcode, make_cell, printer, robot, running, wait_for, wait_job
from jobs.jobdevice import _SIMS, CHECK_FAIL_MARK, FAIL_MARK

from cellctl.jobs.service import HoldAction, InvalidRequest
from cellctl.jobs.spec import JobRejected, JobSpec
from cellctl.model import (
    JobChanged,
    JobState,
    OperatorRequest,
    RequestKind,
    StepChanged,
    StepState,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def print_job(job_id: str, program: str = "part.gcode", **kw: object) -> JobSpec:
    return JobSpec.model_validate(
        {"id": job_id, "route": [{"process": "print", "program": program}], **kw}
    )


async def test_job_runs_to_done_and_is_stored_with_its_history(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer()})
    part = write(tmp_path, "part.gcode", gcode(60))
    async with running(cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        job = await app.jobs.submit(print_job("j1"), {"part.gcode": part})
        assert job.state == JobState.QUEUED
        done = await wait_job(app, "j1", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        step = done.steps[0]
        assert step.device == "p1" and step.state == StepState.DONE
        assert step.ran_sha256 == step.program_sha256 is not None
        assert step.last_acked_line == step.gcode.lines if step.gcode else False
        assert app.jobs.programs.path(step.program_sha256).read_text() == part.read_text()
        history = await app.jobs.transitions("j1")
        seen = []
        while not events.queue.empty():
            ev = events.queue.get_nowait()
            if isinstance(ev, JobChanged | StepChanged):
                seen.append((type(ev).__name__, ev.state.value))
    step_path = [(h["from_state"], h["to_state"]) for h in history if h["idx"] == 0]
    assert step_path == [("queued", "starting"), ("starting", "running"), ("running", "done")]
    assert ("JobChanged", "done") in seen and ("StepChanged", "running") in seen
    # The store holds the same, readable by anyone (what `cellctl jobs` does).
    conn = sqlite3.connect(cell.state_dir / "cellctl.db")
    assert conn.execute("SELECT state FROM jobs WHERE id='j1'").fetchone() == ("done",)


async def test_same_job_id_twice_is_one_job(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer()})
    part = write(tmp_path, "part.gcode", gcode(20))
    other = write(tmp_path, "other.gcode", gcode(30))
    async with running(cell) as app:
        first = await app.jobs.submit(print_job("same"), {"part.gcode": part})
        again = await app.jobs.submit(print_job("same"), {"part.gcode": part})
        # Even with different content the id decides: the stored job is returned unchanged.
        changed = await app.jobs.submit(print_job("same", "other.gcode"), {"other.gcode": other})
        assert first.seq == again.seq == changed.seq
        assert changed.steps[0].program_sha256 == first.steps[0].program_sha256
        assert len(await app.jobs.list_jobs()) == 1
        await wait_job(app, "same", JobState.DONE)
    conn = sqlite3.connect(cell.state_dir / "cellctl.db")
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)


async def test_petg_file_on_pla_printer_is_held_with_the_reason(tmp_path: Path) -> None:
    # The baseline's pre-flight hold; the planner asks for a changeover instead
    # (test_planner_live.test_bare_file_for_an_unloaded_material_asks_for_a_changeover).
    cell = make_cell(
        tmp_path,
        {"p1": printer({"material": "PLA", "nozzle": "0.4"})},
        scheduler={"method": "baseline"},
    )
    petg = write(tmp_path, "petg.gcode", gcode(20, material="PETG"))
    async with running(cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        await app.jobs.submit(print_job("petg", "petg.gcode"), {"petg.gcode": petg})
        job = await wait_job(app, "petg", JobState.HELD, JobState.DONE)
        assert job.state == JobState.HELD
        reason = job.steps[0].reason
        assert reason == (
            "pre-flight: material: the program was sliced for PETG, device p1 has PLA loaded"
        )
        asks = []
        while not events.queue.empty():
            ev = events.queue.get_nowait()
            if isinstance(ev, OperatorRequest):
                asks.append(ev)
        assert [(a.kind, a.step_key, a.device_id) for a in asks] == [
            (RequestKind.LOAD_MATERIAL, "petg/0", "p1")
        ]
        assert reason in asks[0].text and asks[0].details["attempt"] == 1
        # The operator loads PETG and retries: now it prints.
        await app.jobs.set_setup("p1", {"material": "PETG", "nozzle": "0.4"})
        await app.jobs.answer_hold("petg", 0, HoldAction.RETRY, attempt=job.steps[0].attempt)
        done = await wait_job(app, "petg", JobState.DONE, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        assert done.steps[0].attempt == 2


async def test_preflight_names_nozzle_bed_and_device_check(tmp_path: Path) -> None:
    # The nozzle hold is the baseline's: the planner would ask for a nozzle changeover.
    cell = make_cell(tmp_path, {"p1": printer()}, scheduler={"method": "baseline"})
    files = {
        "nozzle.gcode": gcode(10, nozzle=0.6),
        "bed.gcode": gcode(10, bed="0x0,300x0,300x300,0x300"),
        "check.gcode": gcode(10, extra=CHECK_FAIL_MARK),
    }
    paths = {n: write(tmp_path, n, t) for n, t in files.items()}
    async with running(cell) as app:
        for n, p in paths.items():
            await app.jobs.submit(print_job(n.split(".")[0], n), {n: p})
        reasons = {}
        for job_id in ("nozzle", "bed", "check"):
            job = await wait_job(app, job_id, JobState.HELD, JobState.DONE)
            assert job.state == JobState.HELD
            reasons[job_id] = job.steps[0].reason
        # The operator's other answers: confirm done (printed by hand), fail.
        done = await app.jobs.answer_hold("check", 0, "done", who="tester")
        assert done.state == JobState.DONE and done.steps[0].reason == "confirmed done by tester"
        failed = await app.jobs.answer_hold("bed", 0, "fail", who="tester")
        assert failed.state == JobState.FAILED
        assert failed.reason.startswith("step 0 (print): failed by tester: pre-flight: bed size")
        with pytest.raises(InvalidRequest, match="not held"):
            await app.jobs.answer_hold("bed", 0, "retry")
    assert "nozzle: the program was sliced for 0.6, device p1 has 0.4" in reasons["nozzle"]
    assert "300 x 300 mm bed" in reasons["bed"] and "250 x 210 x 210" in reasons["bed"]
    assert "device check: line" in reasons["check"] and "error:20" in reasons["check"]


async def test_program_changed_in_store_is_held(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer()}, {"dispatch_interval_s": 0.2})
    part = write(tmp_path, "part.gcode", gcode(10))
    async with running(cell) as app:
        await app.jobs.set_in_service("p1", False, "maintenance")
        job = await app.jobs.submit(print_job("tampered"), {"part.gcode": part})
        stored = app.jobs.programs.path(job.steps[0].program_sha256 or "")
        stored.write_text(gcode(11))
        await app.jobs.set_in_service("p1", True)
        held = await wait_job(app, "tampered", JobState.HELD, JobState.DONE)
    assert "does not match its hash" in held.steps[0].reason


async def test_machine_fault_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer()})
    bad = write(tmp_path, "bad.gcode", gcode(30, extra=FAIL_MARK))
    async with running(cell) as app:
        await app.jobs.submit(
            JobSpec.model_validate(
                {
                    "id": "bad",
                    "quantity": 2,
                    "route": [{"process": "print", "program": "bad.gcode"}],
                }
            ),
            {"bad.gcode": bad},
        )
        job = await wait_job(app, "bad", JobState.FAILED)
        assert "machine fault at line" in job.reason and "p1" in job.reason
        states = {s.state for s in job.steps}
        assert StepState.FAILED in states and states <= {StepState.FAILED, StepState.CANCELLED}


async def test_route_order_reserves_and_capabilities(tmp_path: Path) -> None:
    # The robot's id sorts after the printers': the printer must still wait for its unload.
    cell = make_cell(tmp_path, {"p1": printer(), "p2": printer(), "zarm": robot()})
    part = write(tmp_path, "part.gcode", gcode(30))
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
        await app.jobs.submit(spec, {"part.gcode": part})
        job = await wait_job(app, "cycle", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert job.state == JobState.DONE, job.reason
    for unit in range(4):
        pr, tend = job.steps[2 * unit], job.steps[2 * unit + 1]
        assert pr.device in ("p1", "p2") and tend.device == "zarm"
        assert tend.reserved == (pr.device,)
        assert pr.ended is not None and tend.started is not None and pr.ended <= tend.started
    # A printer takes no other work from the end of a print until its unload has ended,
    # and no device ever runs two steps at once.
    busy: dict[str, list[tuple[float, float]]] = {}
    for unit in range(4):
        pr, tend = job.steps[2 * unit], job.steps[2 * unit + 1]
        busy.setdefault(str(pr.device), []).append((pr.started or 0, tend.ended or 0))
        busy.setdefault("zarm", []).append((tend.started or 0, tend.ended or 0))
    for spans in busy.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


async def test_submission_no_device_could_take_is_rejected(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer()})
    async with running(cell) as app:
        with pytest.raises(JobRejected, match="no device in the cell can do process 'mill'"):
            await app.jobs.submit(
                JobSpec.model_validate({"id": "m", "route": [{"process": "mill"}]})
            )
        with pytest.raises(JobRejected, match="was not provided"):
            await app.jobs.submit(print_job("nofile"), {})
        assert await app.jobs.list_jobs() == []


async def test_step_waits_for_setup_and_out_of_service(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer({"material": "PLA", "nozzle": "0.4"})})
    part = write(tmp_path, "part.gcode", gcode(10, material="PETG"))
    spec = JobSpec.model_validate(
        {
            "id": "needs-petg",
            "route": [{"process": "print", "program": "part.gcode", "setup": {"material": "PETG"}}],
        }
    )
    async with running(cell) as app:
        await app.jobs.submit(spec, {"part.gcode": part})
        rounds = app.jobs.dispatch_rounds
        await wait_for(lambda: app.jobs.dispatch_rounds >= rounds + 3, "a few dispatch rounds")
        assert (await app.jobs.get("needs-petg")).steps[0].state == StepState.QUEUED
        await app.jobs.set_in_service("p1", False, "nozzle swap")
        await app.jobs.set_setup("p1", {"material": "petg"}, merge=True)
        rounds = app.jobs.dispatch_rounds
        await wait_for(lambda: app.jobs.dispatch_rounds >= rounds + 3, "a few dispatch rounds")
        assert (await app.jobs.get("needs-petg")).steps[0].state == StepState.QUEUED
        await app.jobs.set_in_service("p1", True)
        job = await wait_job(app, "needs-petg", JobState.DONE, JobState.HELD)
        assert job.state == JobState.DONE, job.reason
        assert (await app.jobs.devices())["p1"].setup == {"material": "petg", "nozzle": "0.4"}


async def test_cancel_stops_a_running_step(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer(sim={"time_factor": 1.0, "line_s": 0.01})})
    part = write(tmp_path, "long.gcode", gcode(3000))
    async with running(cell) as app:
        await app.jobs.submit(print_job("long", "long.gcode"), {"long.gcode": part})
        await wait_for(
            lambda: app.jobs._jobs["long"].steps[0].state == StepState.RUNNING, "running"
        )
        job = await app.jobs.cancel("long")
        assert job.state == JobState.CANCELLED
        await wait_for(lambda: app.jobs._jobs["long"].steps[0].state.terminal, "step ended")
        step = app.jobs._jobs["long"].steps[0]
        assert step.state == StepState.CANCELLED
        await wait_for(lambda: not app.supervisor.runners["p1"].busy, "device free")
        assert await app.jobs.cancel("long") == await app.jobs.get("long")  # idempotent


async def test_link_loss_holds_and_resume_continues_from_the_last_line(tmp_path: Path) -> None:
    slow = {"time_factor": 1.0, "line_s": 0.002}
    cell = make_cell(tmp_path, {"p1": printer(sim=slow), "p2": printer()})
    part = write(tmp_path, "long.gcode", gcode(1000))
    other = write(tmp_path, "other.gcode", gcode(20))
    async with running(cell) as app:
        await app.jobs.submit(print_job("lost", "long.gcode"), {"long.gcode": part})
        await wait_for(
            lambda: (app.jobs._jobs["lost"].steps[0].last_acked_line or 0) > 100, "progress stored"
        )
        assert app.jobs._jobs["lost"].steps[0].device == "p1"
        runner = app.supervisor.runners["p1"]
        sim = next(s for s in _SIMS.values() if s.options.line_s == 0.002)
        sim.unplug()
        job = await wait_job(app, "lost", JobState.HELD)
        step = job.steps[0]
        assert "interrupted on p1" in step.reason and "last acknowledged line" in step.reason
        assert step.pinned == "p1"
        last = step.last_acked_line
        assert last is not None and last > 100
        # p1 is back, but the half-printed part is on it: other work goes elsewhere.
        sim.replug()
        await wait_for(lambda: runner.connected.is_set(), "reconnected")
        await app.jobs.submit(print_job("other", "other.gcode"), {"other.gcode": other})
        assert (await wait_job(app, "other", JobState.DONE)).steps[0].device == "p2"
        with pytest.raises(InvalidRequest, match="attempt"):
            await app.jobs.answer_hold("lost", 0, "resume", attempt=step.attempt + 1)
        await app.jobs.answer_hold("lost", 0, "resume", attempt=step.attempt)
        assert (await app.jobs.get("lost")).steps[0].start_line == last + 1
        done = await wait_job(app, "lost", JobState.DONE, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        assert done.steps[0].device == "p1"  # resumed where the part is
    assert sim.started == [("lost/0", 0), ("lost/0", last + 1)]


@pytest.mark.parametrize("policy", ["hold", "restart", "fail"])
async def test_restart_recovers_a_running_step_by_device_policy(
    tmp_path: Path, policy: str
) -> None:
    slow = {"time_factor": 1.0, "line_s": 0.003}
    cell = make_cell(tmp_path, {"p1": printer(sim=slow, recovery=policy)})
    part = write(tmp_path, "long.gcode", gcode(2000))
    async with running(cell) as app:
        await app.jobs.submit(print_job("r", "long.gcode"), {"long.gcode": part})
        await wait_for(
            lambda: (app.jobs._jobs["r"].steps[0].last_acked_line or 0) > 40, "progress stored"
        )
    # The daemon stopped mid-step: the store says running, with its last line.
    async with running(cell) as app:
        if policy == "hold":
            job = await wait_job(app, "r", JobState.HELD)
            reason = job.steps[0].reason
            assert reason.startswith("the daemon stopped while this step ran on p1")
            assert f"last acknowledged line {job.steps[0].last_acked_line}" in reason
        elif policy == "fail":
            job = await wait_job(app, "r", JobState.FAILED)
            assert "the daemon stopped while this step ran on p1" in job.reason
        else:
            await wait_for(lambda: app.jobs._jobs["r"].steps[0].attempt == 2, "restarted")
            await app.jobs.cancel("r")
            job = await wait_job(app, "r", JobState.CANCELLED)
        history = await app.jobs.transitions("r")
    recovered = next(h for h in history if h["idx"] == 0 and h["from_state"] == "running")
    expected = {"hold": "held", "fail": "failed", "restart": "queued"}[policy]
    assert recovered["to_state"] == expected
