"""The planner dispatcher's own rules (pure logic, the real planner on a worker thread):
it follows the latest plan, re-plans latest-wins, and falls back to the baseline rule
when the plan is stale or the re-plan failed."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from cellctl.jobs import planned
from cellctl.jobs.dispatch import Candidate, DeviceView, check_assignments
from cellctl.jobs.live_problem import Snapshot, build_problem
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.scheduler_config import DispatchMethod, SchedulerSection

BOUND = 20.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def cand(n: int, material: str, est: float = 600.0, **kw: object) -> Candidate:
    return Candidate(
        key=f"j{n}/0",
        job_id=f"j{n}",
        index=0,
        seq=n,
        priority=0,
        process="print",
        setup={"material": material},
        estimated_s=est,
        **kw,  # type: ignore[arg-type]
    )


def dev(name: str, material: str, free: bool = True, busy_until: float | None = None) -> DeviceView:
    return DeviceView(name, frozenset({"print"}), {"material": material}, free, None, busy_until)


async def planned_once(
    d: PlannerDispatcher, cands: list[Candidate], devs: Mapping[str, DeviceView]
) -> None:
    """One assign (which queues a re-plan) and wait for that plan."""
    before = d.stats.plans + d.stats.failures
    d.assign(cands, devs)
    async with asyncio.timeout(BOUND):
        while d.stats.plans + d.stats.failures == before:
            await asyncio.sleep(0.01)


def settings(**kw: object) -> SchedulerSection:
    return SchedulerSection.model_validate({"method": "planner", "budget_s": 0.05, **kw})


@pytest.mark.parametrize("worker", ["thread", "process"])
async def test_follows_the_plan_and_groups_setups(worker: str) -> None:
    clock = Clock()
    d = PlannerDispatcher(lambda: settings(worker=worker), clock=clock)
    cands = [cand(1, "PETG"), cand(2, "PLA"), cand(3, "PETG"), cand(4, "PLA")]
    devs = {"p1": dev("p1", "PLA"), "p2": dev("p2", "PETG")}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        await planned_once(d, cands, devs)
        out = d.assign(cands, devs)
        task.cancel()
    check_assignments(out, {c.key: c for c in cands}, devs)
    assert {(a.key, a.device) for a in out} == {("j2/0", "p1"), ("j1/0", "p2")}
    assert d.current is not None and d.current.plan.figures.changeover == 0
    assert d.announcer.take() == []  # nothing to change over


async def test_stale_or_failed_plan_falls_back_to_the_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    d = PlannerDispatcher(lambda: settings(max_plan_age_s=30), clock=clock)
    cands = [cand(1, "ABS"), cand(2, "PLA")]
    devs = {"p1": dev("p1", "PLA")}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        await planned_once(d, cands, devs)
        # The plan: j2 (PLA) first; j1 asks for a changeover to ABS later.
        out = d.assign(cands, devs)
        assert [a.key for a in out] == ["j2/0"]
        # Stale: the baseline rule decides (it never needs a changeover), no request.
        clock.t += 31
        fallbacks = d.stats.fallbacks
        out = d.assign([cands[0]], devs)  # only ABS waits: the baseline starts nothing
        assert out == [] and d.stats.fallbacks == fallbacks + 1

        # A re-plan that raises is not followed either.
        def broken(*_: object) -> object:
            raise RuntimeError("planner bug")

        monkeypatch.setattr(planned, "_plan_snapshot", broken)
        await planned_once(d, [cands[1]], devs)
        assert d.stats.failures == 1 and "planner bug" in d.stats.last_error
        fallbacks = d.stats.fallbacks
        out = d.assign([cands[1]], devs)
        assert [a.key for a in out] == ["j2/0"] and d.stats.fallbacks == fallbacks + 1
        task.cancel()


async def test_replans_latest_wins() -> None:
    """Many changes while one plan runs: one more plan, of the latest problem."""
    clock = Clock()
    d = PlannerDispatcher(lambda: settings(), clock=clock)
    devs = {"p1": dev("p1", "PLA", free=False, busy_until=clock.t + 600)}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        for n in range(1, 30):
            d.assign([cand(k, "PLA") for k in range(1, n + 1)], devs)
        async with asyncio.timeout(BOUND):
            while d.current is None or len(d.current.planned) != 29:
                await asyncio.sleep(0.01)
        task.cancel()
    assert d.stats.plans < 29  # the snapshots in between were skipped, not queued


def test_problem_from_the_cell() -> None:
    """Busy devices are planned from their step's end; down ones and their steps left out;
    a change costs only the keys the step names."""
    now = 5000.0
    cfg = settings(changeover={"material": {"seconds": 300, "manual": True}})
    devs = {
        "p1": dev("p1", "PLA"),
        "p2": dev("p2", "PETG", free=False, busy_until=now + 120),
        "down": DeviceView("down", frozenset({"mill"}), {}, False, None, None),
    }
    cands = [cand(1, "PETG"), cand(2, "PLA", due=now + 60)]
    cands.append(Candidate("m/0", "m", 0, 9, 0, "mill", {"tool": "T1"}, estimated_s=10.0))
    problem = build_problem(Snapshot(now, tuple(cands), devs), cfg)
    assert [m.id for m in problem.machines] == ["p1", "p2"]
    assert [m.free_at for m in problem.machines] == [0, 120]
    assert [j.id for j in problem.jobs] == ["j1/0", "j2/0"]
    assert problem.jobs[1].due == 60
    pla, petg = problem.machines[0].initial_setup, problem.machines[1].initial_setup
    assert problem.changeover("p1", pla, petg) == 300 and problem.is_manual("p1", pla, petg)


def test_the_planner_is_the_default() -> None:
    assert SchedulerSection().method is DispatchMethod.PLANNER
    assert SchedulerSection(method="baseline").method is DispatchMethod.BASELINE
    with pytest.raises(ValueError, match="planner_method"):
        SchedulerSection(planner_method="magic")


def test_config_mistakes_name_the_key(tmp_path: Path) -> None:
    from jobs.conftest import REGISTRY

    from cellctl.config import parse
    from cellctl.errors import ConfigError

    bad = {"cell": {"name": "x"}, "scheduler": {"method": "planner", "budget_s": -1}}
    with pytest.raises(ConfigError, match=r"cell.toml: scheduler.budget_s: expected greater"):
        parse(tmp_path / "cell.toml", bad, REGISTRY)
    bad = {"cell": {"name": "x"}, "scheduler": {"planner_method": "magic"}}
    with pytest.raises(ConfigError, match=r"scheduler: .*planner_method: expected one of"):
        parse(tmp_path / "cell.toml", bad, REGISTRY)
    cell = parse(
        tmp_path / "cell.toml",
        {"cell": {"name": "x"}, "scheduler": {"changeover": {"tool": {"seconds": 30}}}},
        REGISTRY,
    )
    assert cell.config.scheduler.key_change("tool").seconds == 30
    assert cell.config.scheduler.key_change("nozzle").seconds == 900  # Marlin default


def test_a_short_spool_is_never_dispatched(tmp_path: Path) -> None:
    from jobs.conftest import gcode

    from cellctl.jobs.dispatch import Assignment, DispatchViolation, can_run, spool_short
    from cellctl.jobs.gcode import scan_file

    path = tmp_path / "p.gcode"
    path.write_text(gcode(10, extra="; filament used [g] = 12.5, 3.5"))
    assert scan_file(path).filament_g == 16.0  # two extruders: both come off spools
    c = cand(1, "PLA", filament_g=16.0)
    loaded = {
        "p1": DeviceView("p1", frozenset({"print"}), {"material": "PLA", "spool_g": "15"}, True)
    }
    assert spool_short(loaded["p1"].setup, c) == 16.0 and not can_run(loaded["p1"], c)

    with pytest.raises(DispatchViolation, match="spool_g: needs 16 g, loaded 15"):
        check_assignments([Assignment(c.key, "p1")], {c.key: c}, loaded)
    uncounted = DeviceView("p1", frozenset({"print"}), {"material": "PLA"}, True)
    assert can_run(uncounted, c)  # no spool_g: not counted, not gated


async def test_a_manual_changeover_waits_for_the_shift_and_is_asked_ahead_of_it() -> None:
    """Monday 03:00 in Berlin, the shift from 06:00: the changeover is planned at 06:00,
    asked for `notice_s` (15 min) before, not at once; then the step starts after it."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    monday_3am = dt.datetime(2026, 12, 7, 3, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    clock = Clock()
    clock.t = monday_3am
    cfg = settings(
        max_plan_age_s=86400,
        notice_s=900,
        calendar={
            "timezone": "Europe/Berlin",
            "shifts": [{"days": ["mon"], "from": "06:00", "to": "14:00"}],
        },
    )
    d = PlannerDispatcher(lambda: cfg, clock=clock)
    cands = [cand(1, "PETG")]
    devs = {"p1": dev("p1", "PLA")}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(d.run())
        await planned_once(d, cands, devs)
        assert d.assign(cands, devs) == []
        assert d.announcer.take() == []  # three hours early: not yet
        live = d.current
        assert live is not None
        [a] = live.plan.assignments
        assert live.made_at + a.changeover_start == monday_3am + 3 * 3600
        clock.t = monday_3am + 3 * 3600 - 800  # 05:46:40: within the notice
        assert d.assign(cands, devs) == []
        [req] = d.announcer.take()
        assert req.details["changeover_start"] == monday_3am + 3 * 3600
        task.cancel()


async def test_an_old_job_needing_a_changeover_does_not_starve() -> None:
    """Without a due date a job is due at submission + implicit_due_factor × its estimate:
    a PETG job waiting long goes before fresh PLA work, changeover or not; with the factor
    0 the planner groups the PLA work first (fewer changeover minutes)."""
    clock = Clock()
    old = cand(1, "PETG", est=600.0, submitted=clock.t - 3000)
    fresh = [cand(n, "PLA", est=600.0, submitted=clock.t) for n in range(2, 4)]
    devs = {"p1": dev("p1", "PLA")}
    firsts = {}
    for factor in (4.0, 0.0):
        d = PlannerDispatcher(lambda f=factor: settings(implicit_due_factor=f), clock=clock)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(d.run())
            await planned_once(d, [old, *fresh], devs)
            task.cancel()
        assert d.current is not None
        firsts[factor] = d.current.plan.sequences["p1"][0]
    assert firsts == {4.0: "j1/0", 0.0: "j2/0"}


def test_a_request_is_updated_when_its_changeover_moves_and_withdrawn_when_it_goes() -> None:
    from cellctl.jobs.changeover import MOVED_S, Announcer, Needed

    a = Announcer()
    step = cand(1, "PETG")

    def need(start: float) -> Needed:
        return Needed("p1", step, {"material": "PLA"}, start + 600, start, None)

    a.update({"p1": need(1000.0)}, 0.0)
    [first] = a.take()
    assert first.details["load"] == {"material": "PETG"} and not first.details["updated"]
    a.update({"p1": need(1000.0 + MOVED_S / 2)}, 1.0)  # drift: not news
    assert a.take() == []
    a.update({"p1": need(1000.0 + MOVED_S * 2)}, 2.0)  # moved: asked again, updated
    [moved] = a.take()
    assert moved.details["updated"] and moved.details["changeover_start"] == 1000.0 + MOVED_S * 2
    a.update({}, 3.0)
    [gone] = a.take()
    assert gone.details["withdrawn"] and gone.details["why"] == "the plan changed"
    assert a.requested == 1 and a.withdrawn == 1 and a.pins() == {}


def test_a_new_priority_is_a_new_problem() -> None:
    """`set_priority` changes no step and no device: the planner still plans again."""
    clock = Clock()
    d = PlannerDispatcher(lambda: settings(), clock=clock)
    devs = {"p1": dev("p1", "PLA", free=False, busy_until=clock.t + 600)}
    d.assign([cand(1, "PLA"), cand(2, "PLA")], devs)
    d._dirty.clear()
    d.assign([cand(1, "PLA"), cand(2, "PLA")], devs)
    assert not d._dirty.is_set()  # the same problem: no re-plan
    d.assign([cand(1, "PLA"), dataclasses.replace(cand(2, "PLA"), priority=5)], devs)
    assert d._dirty.is_set() and d._pending is not None
    assert [c.priority for c in d._pending.candidates] == [0, 5]
