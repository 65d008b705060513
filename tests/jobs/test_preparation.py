"""Preparation ahead of a manual changeover (`[scheduler.preparation.material]`): a
Marlin printer waiting for a PETG changeover heats to the loaded PLA's unload
temperature, and cools again when the change is withdrawn; off shift it never heats.
The Marlin simulator in-process (time_factor 50), the real App with the planner."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions
from jobs.conftest import BOUND, gcode, running, wait_for
from jobs.test_planned import cand, settings
from jobs.test_planner_live import next_request, planner_cell

from cellctl.jobs.changeover import Needed
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.jobs.preparation import PrepAction, Preparer
from cellctl.jobs.spec import JobSpec

PREHEAT = {
    "material": {
        "ahead": {"PLA": ["M104 S200"], "*": ["M104 S240"]},
        "undo": ["M104 S0"],
        "lead_s": 600,
    }
}


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
