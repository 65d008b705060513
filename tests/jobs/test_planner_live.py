"""The planner as the live dispatcher, end to end in one process: the real App, store,
supervisor and in-test machines (jobs.jobdevice, time_factor 10), `[scheduler]
method = "planner"`, with a scripted operator answering changeover requests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cellctl_drivers.grbl.sim import GrblSim, GrblSimOptions
from jobs.conftest import BOUND, REGISTRY, gcode, printer, robot, running, wait_for, wait_job

from cellctl.config import Cell, parse
from cellctl.events import Subscription
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState, OperatorRequest, RequestKind, StepState


def planner_cell(tmp_path: Path, devices: dict[str, Any], **scheduler: Any) -> Cell:
    data = {
        "cell": {"name": "plantest"},
        "supervisor": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "stable_after_s": 0},
        "jobs": {"dispatch_interval_s": 0.2, "progress_flush_s": 0.1},
        "scheduler": {"method": "planner", "budget_s": 0.05, **scheduler},
        "devices": devices,
    }
    return parse(tmp_path / "cell.toml", data, REGISTRY)


def print_job(tmp_path: Path, job_id: str, material: str, lines: int = 40) -> tuple[JobSpec, dict]:
    path = tmp_path / f"{job_id}.gcode"
    path.write_text(gcode(lines, material=material))
    spec = JobSpec.model_validate(
        {"id": job_id, "route": [{"process": "print", "program": path.name}]}
    )
    return spec, {path.name: path}


async def next_request(events: Subscription, bound: float = BOUND) -> OperatorRequest:
    async with asyncio.timeout(bound):
        while True:
            ev = await events.queue.get()
            if isinstance(ev, OperatorRequest) and ev.kind == RequestKind.CHANGEOVER:
                return ev


async def test_bare_file_for_an_unloaded_material_asks_for_a_changeover(tmp_path: Path) -> None:
    cell = planner_cell(tmp_path, {"p1": printer()})  # PLA loaded
    async with running(cell) as app:
        assert isinstance(app.jobs.dispatcher, PlannerDispatcher)
        events = app.bus.subscribe("test", lossless=True)
        spec, files = print_job(tmp_path, "petg", "PETG")
        await app.jobs.submit(spec, files)
        req = await next_request(events)
        assert req.device_id == "p1" and req.step_key == "petg/0"
        assert req.details["load"] == {"material": "PETG"}
        assert req.details["unload"] == {"material": "PLA"}
        assert req.details["withdrawn"] is False
        # Its reason is what `cellctl jobs` shows.
        await wait_for(
            lambda: "waiting for a changeover on p1" in app.jobs._jobs["petg"].steps[0].reason,
            "the step's reason names its changeover",
        )
        assert app.jobs._jobs["petg"].steps[0].state == StepState.QUEUED
        # The operator loads PETG and says so (`answer` with setup{} does the same).
        await app.jobs.set_setup("p1", {"material": "PETG"}, merge=True)
        done = await wait_job(app, "petg", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        gone = await next_request(events)
        assert gone.details["withdrawn"] is True and gone.details["why"] == "setup loaded"


async def test_a_replan_that_moves_a_changeover_withdraws_its_request(tmp_path: Path) -> None:
    cell = planner_cell(
        tmp_path, {"p1": printer(), "p2": printer(setup={"material": "PETG", "nozzle": "0.4"})}
    )
    async with running(cell) as app:
        await app.jobs.set_in_service("p2", False, "maintenance")
        events = app.bus.subscribe("test", lossless=True)
        spec, files = print_job(tmp_path, "petg", "PETG")
        await app.jobs.submit(spec, files)
        req = await next_request(events)
        assert req.device_id == "p1" and req.details["withdrawn"] is False
        # p2, with PETG loaded, comes back: the re-plan runs the job there, no changeover.
        await app.jobs.set_in_service("p2", True)
        gone = await next_request(events)
        assert gone.device_id == "p1" and gone.details["withdrawn"] is True
        assert gone.details["why"] == "the plan changed"
        done = await wait_job(app, "petg", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE and done.steps[0].device == "p2"
        assert app.jobs._device_row("p1").setup["material"] == "PLA"


async def test_mixed_materials_with_a_scripted_operator(tmp_path: Path) -> None:
    """Every job ends done; no changeover is asked for a setup already loaded; the
    planner groups the ABS work into one changeover where first-come order needs more."""
    cell = planner_cell(
        tmp_path,
        {"p1": printer(), "p2": printer(setup={"material": "PETG", "nozzle": "0.4"})},
    )
    mix = ["ABS", "PLA", "ABS", "PETG", "ABS", "PLA", "PETG", "ABS"]
    async with running(cell) as app:
        for d in ("p1", "p2"):  # all work in before the first plan: one problem, one answer
            await app.jobs.set_in_service(d, False, "loading")
        events = app.bus.subscribe("test", lossless=True)
        for i, material in enumerate(mix):
            spec, files = print_job(tmp_path, f"j{i}", material)
            await app.jobs.submit(spec, files)
        for d in ("p1", "p2"):
            await app.jobs.set_in_service(d, True)
        done_changeovers: list[tuple[str, dict[str, str]]] = []

        async def operator() -> None:
            while True:
                req = await next_request(events)
                if req.details["withdrawn"]:
                    continue
                done = (req.device_id, dict(req.details["load"]))
                if req.details["updated"] and done in done_changeovers:
                    # the same ask with moved times, published while the answer was
                    # being stored: already done
                    continue
                loaded = app.jobs._device_row(req.device_id).setup
                for key, value in req.details["load"].items():
                    assert loaded.get(key) != value, f"asked for a loaded setup: {req.text}"
                done_changeovers.append((req.device_id, dict(req.details["load"])))
                await app.jobs.set_setup(req.device_id, req.details["load"], merge=True)

        async with asyncio.TaskGroup() as tg:
            op = tg.create_task(operator())
            for i in range(len(mix)):
                job = await wait_job(app, f"j{i}", JobState.DONE, JobState.FAILED, JobState.HELD)
                assert job.state == JobState.DONE, job.reason
            op.cancel()
        # ABS on one printer once, and that printer's own material never needed again
        # before (fifo order on two printers would switch at least three times).
        assert len(done_changeovers) == 1, done_changeovers
        assert done_changeovers[0][1] == {"material": "ABS"}
        planner = app.jobs.dispatcher
        assert isinstance(planner, PlannerDispatcher) and planner.stats.plans >= 1


async def test_automatic_tool_change_through_change_setup_on_the_grbl_simulator(
    tmp_path: Path,
) -> None:
    """A mill with a tool-change macro declared automatic for `tool`: the planner's
    changeover runs through the driver's `change_setup` on the GRBL simulator (time_factor
    50), no operator is asked, the new tool is stored once it ran, then the job runs."""
    sim = GrblSim(GrblSimOptions(time_factor=50.0, emulate_link=False, build_info="mill"))
    prog = tmp_path / "part.nc"
    prog.write_text("G21 G90\nG0 X1\nG0 X2\n")
    macro = ["G53 G0 Z0", "G4 P0.1"]
    async with sim:
        cell = planner_cell(
            tmp_path,
            {
                "mill": {
                    "driver": "grbl",
                    "backend": "real",
                    "port": sim.endpoint,
                    "expected_build_info": "mill",
                    "processes": ["mill"],
                    "setup": {"tool": "T1", "fixture": "vise"},
                    "tool_change_macro": macro,
                }
            },
            automatic={"mill": ["tool"]},
        )
        async with running(cell) as app:
            events = app.bus.subscribe("test", lossless=True)
            spec = JobSpec.model_validate(
                {
                    "id": "cut",
                    "route": [{"process": "mill", "program": "part.nc", "setup": {"tool": "T2"}}],
                }
            )
            await app.jobs.submit(spec, {"part.nc": prog})
            done = await wait_job(app, "cut", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
            assert app.jobs._device_row("mill").setup == {"tool": "T2", "fixture": "vise"}
            ran = [line.replace(" ", "") for line in sim.executed]
            at = ran.index("G53G0Z0")  # the macro, before the job's first move
            assert ran.index("G0X1") > at, ran
            asked = []
            while not events.queue.empty():
                ev = events.queue.get_nowait()
                if isinstance(ev, OperatorRequest):
                    asked.append(ev)
            assert asked == [], asked


async def test_a_failed_automatic_changeover_asks_an_operator(tmp_path: Path) -> None:
    """Declared automatic, but the driver cannot (jobsim: NotSupported): the setup is
    not changed, and the change is asked of an operator instead."""
    cell = planner_cell(tmp_path, {"p1": printer()}, automatic={"p1": ["material"]})
    async with running(cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        spec, files = print_job(tmp_path, "petg", "PETG")
        await app.jobs.submit(spec, files)
        req = await next_request(events)
        assert req.device_id == "p1" and req.details["load"] == {"material": "PETG"}
        planner = app.jobs.dispatcher
        assert isinstance(planner, PlannerDispatcher)
        assert "operator" in planner.auto_failed["p1"]
        assert app.jobs._device_row("p1").setup["material"] == "PLA"


async def test_bed_clearing_gates_the_next_print(tmp_path: Path) -> None:
    """A printer in `bed_clearing` holds its finished part: no new print until the bed
    is confirmed clear; a route whose unload step (reserving @previous) takes the part
    leaves no such wait. With either dispatcher: here the baseline."""
    data_cell = planner_cell(
        tmp_path,
        {"p1": printer(), "arm": robot()},
        method="baseline",
        bed_clearing=["p1"],
    )
    async with running(data_cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        first, files = print_job(tmp_path, "first", "PLA")
        await app.jobs.submit(first, files)
        done = await wait_job(app, "first", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        req = await next_kind(events, RequestKind.CLEAR_BED)
        assert req.device_id == "p1" and req.step_key == "first/0"
        assert req.details["cleared"] is False
        second, files = print_job(tmp_path, "second", "PLA")
        await app.jobs.submit(second, files)
        # Dispatch rounds pass (the tick is 0.2 s); the gate holds however many.
        rounds = app.jobs.dispatch_rounds
        await wait_for(lambda: app.jobs.dispatch_rounds >= rounds + 5, "five dispatch rounds")
        assert app.jobs._jobs["second"].steps[0].state == StepState.QUEUED
        await app.jobs.confirm_bed_clear("p1", who="test")
        done = await wait_job(app, "second", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        await next_kind(events, RequestKind.CLEAR_BED)  # cleared, announced
        await app.jobs.confirm_bed_clear("p1", who="test")  # the second part
        # A print with its unload step: the robot takes the part, no clearing asked.
        path = tmp_path / "unloaded.gcode"
        path.write_text(gcode(40))
        spec = JobSpec.model_validate(
            {
                "id": "unloaded",
                "route": [
                    {"process": "print", "program": path.name},
                    {
                        "process": "tend",
                        "program": {"kind": "robot", "name": "unload"},
                        "reserves": ["@previous"],
                    },
                ],
            }
        )
        await app.jobs.submit(spec, {path.name: path})
        done = await wait_job(app, "unloaded", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        assert not app.jobs.bed_uncleared("p1")


async def next_kind(events: Subscription, kind: RequestKind) -> OperatorRequest:
    async with asyncio.timeout(BOUND):
        while True:
            ev = await events.queue.get()
            if isinstance(ev, OperatorRequest) and ev.kind == kind:
                return ev


async def test_a_spool_too_light_for_the_next_job_gets_a_spool_change_first(
    tmp_path: Path,
) -> None:
    """The spool's grams (setup `spool_g`) count down by each print's `filament used [g]`;
    a job needing more than is left is asked a spool change and never started short."""
    cell = planner_cell(
        tmp_path, {"p1": printer(setup={"material": "PLA", "nozzle": "0.4", "spool_g": "30"})}
    )
    async with running(cell) as app:
        events = app.bus.subscribe("test", lossless=True)
        for name in ("s1", "s2"):
            path = tmp_path / f"{name}.gcode"
            path.write_text(gcode(40, extra="; filament used [g] = 20.5"))
            spec = JobSpec.model_validate(
                {"id": name, "route": [{"process": "print", "program": path.name}]}
            )
            await app.jobs.submit(spec, {path.name: path})
        req = await next_request(events)
        # The first print took 20.5 g of 30: 9.5 g left, short for the second.
        assert req.details["load"] == {"spool_g": ">=20.5"}, req.details
        assert req.details["unload"] == {"spool_g": "9.5"}
        ran = [j for j in ("s1", "s2") if app.jobs._jobs[j].state == JobState.DONE]
        assert len(ran) == 1
        waiting = "s2" if ran == ["s1"] else "s1"
        assert app.jobs._jobs[waiting].steps[0].state == StepState.QUEUED
        await app.jobs.set_setup("p1", {"spool_g": "1000"}, merge=True)
        done = await wait_job(app, waiting, JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason
        assert app.jobs._device_row("p1").setup["spool_g"] == "979.5"
