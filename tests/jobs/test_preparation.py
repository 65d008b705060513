"""Preparation ahead of a manual changeover (`[scheduler.preparation.material]`): a
Marlin printer waiting for a PETG changeover heats to the loaded PLA's unload
temperature, and cools again when the change is withdrawn; off shift it never heats.
The Marlin simulator in-process (time_factor 50), the real App with the planner."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions
from jobs.conftest import BOUND, gcode, running, wait_for, wait_job
from jobs.test_planned import cand, settings
from jobs.test_planner_live import next_request, planner_cell

from cellctl.jobs.changeover import Needed
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.jobs.preparation import PrepAction, Preparer
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState, StepState

PREHEAT = {
    "material": {
        "ahead": {"PLA": ["M104 S200"], "*": ["M104 S240"]},
        "undo": ["M104 S0"],
        "lead_s": 600,
    }
}


# A preparation that leaves the running print alone (a heated chamber), declared so.
CHAMBER = {"material": {"ahead": {"*": ["M141 S40"]}, "undo": ["M141 S0"], "while_working": True}}


def off_shift_calendar(now: float) -> dict[str, Any]:
    """A daily one-hour shift starting two hours from now (UTC): nobody is there now."""
    start = dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(hours=2)
    end = start + dt.timedelta(hours=1)
    shift = {"from": start.strftime("%H:%M"), "to": end.strftime("%H:%M")}
    return {"timezone": "UTC", "shifts": [shift]}


def test_preparer_rules() -> None:
    now = 1_000_000.0
    cfg = settings(preparation=PREHEAT)
    step = cand(1, "PETG")

    def need(start: float, loaded: str = "PLA") -> dict[str, Needed]:
        return {"p1": Needed("p1", step, {"material": loaded}, start + 60, start, None)}

    p = Preparer()
    p.update(need(now + 900), {"p1"}, (), now, cfg)  # beyond lead_s: not yet
    assert p.take() == []
    p.update(need(now + 300), set(), (), now, cfg)  # working: never
    assert p.take() == []
    p.update(need(now + 300), {"p1"}, (), now, cfg)
    assert p.take() == [PrepAction("p1", "j1/0", ("M104 S200",))]
    p.update(need(now + 200), {"p1"}, (), now, cfg)  # once per changeover
    assert p.take() == []
    p.update({}, {"p1"}, (), now, cfg)  # withdrawn, not done: heater off
    assert p.take() == [PrepAction("p1", "j1/0", ("M104 S0",), undo=True)]
    p.update(need(now, "ABS"), {"p1"}, (), now, cfg)  # any other material: "*"
    assert p.take() == [PrepAction("p1", "j1/0", ("M104 S240",))]
    p.update({}, {"p1"}, {("p1", "j1/0")}, now, cfg)  # done: no undo
    assert p.take() == []

    off = settings(preparation=PREHEAT, calendar=off_shift_calendar(now))
    p.update(need(now), {"p1"}, (), now, off)
    assert p.take() == [] and p.prepared == 2

    # Declared `while_working`: sent to a working device too, marked so (the service
    # sends it between the running job's lines); undone while it works, too.
    ahead = {"material": {**CHAMBER["material"], "lead_s": 600}}
    working = settings(preparation=ahead)
    w = Preparer()
    w.update(need(now + 300), set(), (), now, working)
    assert w.take() == [PrepAction("p1", "j1/0", ("M141 S40",), while_working=True)]
    w.update({}, set(), (), now, working)
    assert w.take() == [PrepAction("p1", "j1/0", ("M141 S0",), undo=True, while_working=True)]


def marlin(sim: MarlinSim) -> dict[str, Any]:
    return {
        "driver": "marlin",
        "backend": "real",
        "port": sim.endpoint,
        "processes": ["print"],
        "setup": {"material": "PLA", "nozzle": "0.4"},
        "temp_interval_s": 1,
    }


async def submit_petg(app: Any, tmp_path: Path) -> None:
    path = tmp_path / "petg.gcode"
    path.write_text(gcode(10, material="PETG"))
    spec = {"id": "petg", "route": [{"process": "print", "program": path.name}]}
    await app.jobs.submit(JobSpec.model_validate(spec), {path.name: path})


async def test_a_waiting_printer_preheats_and_cools_when_the_change_is_withdrawn(
    tmp_path: Path,
) -> None:
    async with MarlinSim(MarlinSimOptions(time_factor=50, emulate_link=False)) as sim:
        cell = planner_cell(tmp_path, {"p1": marlin(sim)}, preparation=PREHEAT)
        async with running(cell) as app:
            events = app.bus.subscribe("test", lossless=True)
            await submit_petg(app, tmp_path)
            req = await next_request(events)
            assert req.details["load"] == {"material": "PETG"}
            await wait_for(lambda: sim.hotend.target == 200, "preheated to PLA's 200 °C")
            await app.jobs.cancel("petg")
            gone = await next_request(events)
            assert gone.details["withdrawn"] is True
            await wait_for(lambda: sim.hotend.target == 0, "the heater off again")


async def test_off_shift_nothing_heats(tmp_path: Path) -> None:
    import time

    async with MarlinSim(MarlinSimOptions(time_factor=50, emulate_link=False)) as sim:
        cell = planner_cell(
            tmp_path,
            {"p1": marlin(sim)},
            preparation=PREHEAT,
            calendar=off_shift_calendar(time.time()),
            notice_s=86400,  # asked at once: the operator is told; the printer stays cold
        )
        async with running(cell) as app:
            events = app.bus.subscribe("test", lossless=True)
            await submit_petg(app, tmp_path)
            req = await next_request(events)
            assert req.details["changeover_start"] > time.time() + 3600  # in the shift
            rounds = app.jobs.dispatch_rounds
            await wait_for(lambda: app.jobs.dispatch_rounds >= rounds + 5, "five rounds", BOUND)
            planner = app.jobs.dispatcher
            assert isinstance(planner, PlannerDispatcher) and planner.preparer.prepared == 0
            assert sim.hotend.target == 0


async def test_a_preparation_declared_while_working_goes_in_between_the_print(
    tmp_path: Path,
) -> None:
    """The printer prints PLA and a PETG job waits for its changeover after it: the
    chamber preparation (`while_working = true`) is sent while the print runs, between
    its lines, and the print goes on to the end (Marlin simulator, time_factor 50)."""
    async with MarlinSim(MarlinSimOptions(time_factor=50, emulate_link=False)) as sim:
        cell = planner_cell(tmp_path, {"p1": marlin(sim)}, preparation=CHAMBER)
        async with running(cell) as app:
            await app.jobs.set_in_service("p1", False, "loading")  # one plan for both
            path = tmp_path / "pla.gcode"
            path.write_text(gcode(150, material="PLA"))
            spec = {"id": "pla", "route": [{"process": "print", "program": path.name}]}
            await app.jobs.submit(JobSpec.model_validate(spec), {path.name: path})
            await submit_petg(app, tmp_path)
            await app.jobs.set_in_service("p1", True)
            await wait_for(lambda: "M141 S40" in sim.executed, "the chamber preparation sent")
            at = sim.executed.index("M141 S40")
            # The print is under way (its stored state may still say starting: the
            # driver's first progress comes later); the lines below prove the placement.
            assert app.jobs._jobs["pla"].steps[0].state in (StepState.STARTING, StepState.RUNNING)
            done = await wait_job(app, "pla", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
            moves = [i for i, c in enumerate(sim.executed) if c.startswith("G1 ")]
            assert moves[0] < at < moves[-1], "sent between the print's own lines"
            await app.jobs.cancel("petg")
