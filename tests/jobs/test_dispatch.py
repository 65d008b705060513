"""Dispatch invariants, by property: never an incapable or mis-set-up device, never two
steps on one device at once, route order kept, and no device left idle for nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.jobs.dispatch import (
    Assignment,
    BaselineDispatcher,
    Candidate,
    DeviceView,
    DispatchViolation,
    can_run,
    check_assignments,
    unmet,
)

PROCESSES = ["print", "mill", "tend"]
MATERIALS = ["PLA", "PETG", "ABS"]


@dataclass
class SimStep:
    job: int
    index: int
    process: str
    setup: dict[str, str]
    reserve_previous: bool
    state: str = "queued"  # queued → running → done, or back to queued pinned (interrupted)
    device: str | None = None
    reserved: tuple[str, ...] = ()
    pinned: str | None = None


@dataclass
class World:
    devices: dict[str, tuple[frozenset[str], dict[str, str]]]
    jobs: list[tuple[int, list[SimStep]]]  # (priority, route)
    busy: dict[str, str] = field(default_factory=dict)  # device → step key

    def candidates(self) -> list[Candidate]:
        out = []
        for seq, (prio, route) in enumerate(self.jobs):
            for s in route:
                if s.state != "queued":
                    continue
                prev = route[s.index - 1] if s.index else None
                if prev is not None and prev.state != "done":
                    continue
                reserves = (prev.device,) if s.reserve_previous and prev and prev.device else ()
                out.append(
                    Candidate(
                        key=f"{s.job}/{s.index}",
                        job_id=str(s.job),
                        index=s.index,
                        seq=seq,
                        priority=prio,
                        process=s.process,
                        setup=s.setup,
                        reserves=tuple(r for r in reserves if r is not None),
                        only_on=s.pinned,
                    )
                )
        return out

    def kept(self) -> dict[str, str]:
        """Devices kept for one step: where a step was interrupted, and hand-overs."""
        out: dict[str, str] = {}
        for _, route in self.jobs:
            for s in route:
                if s.state != "queued":
                    continue
                if s.pinned:
                    out.setdefault(s.pinned, f"{s.job}/{s.index}")
                prev = route[s.index - 1] if s.index else None
                if s.reserve_previous and prev and prev.state == "done" and prev.device:
                    out.setdefault(prev.device, f"{s.job}/{s.index}")
        return out

    def views(self) -> dict[str, DeviceView]:
        kept = self.kept()
        return {
            d: DeviceView(d, procs, dict(setup), d not in self.busy, kept.get(d))
            for d, (procs, setup) in self.devices.items()
        }

    def step(self, key: str) -> SimStep:
        job, index = (int(x) for x in key.split("/"))
        return self.jobs[job][1][index]


def _steps(job: int, draw: st.DrawFn) -> list[SimStep]:
    n = draw(st.integers(1, 3))
    out = []
    for i in range(n):
        options: list[dict[str, str]] = [{}, *({"material": m} for m in MATERIALS)]
        setup = draw(st.sampled_from(options))
        out.append(
            SimStep(
                job,
                i,
                draw(st.sampled_from(PROCESSES)),
                setup,
                reserve_previous=i > 0 and draw(st.booleans()),
            )
        )
    return out


@st.composite
def worlds(draw: st.DrawFn) -> World:
    devices = {}
    for i in range(draw(st.integers(1, 5))):
        procs = frozenset(draw(st.lists(st.sampled_from(PROCESSES), min_size=1, unique=True)))
        setup = {"material": draw(st.sampled_from(MATERIALS))}
        devices[f"d{i}"] = (procs, setup)
    jobs = []
    for j in range(draw(st.integers(1, 8))):
        jobs.append((draw(st.integers(-2, 2)), _steps(j, draw)))
    return World(devices, jobs)


@settings(max_examples=60, deadline=None)
@given(world=worlds(), data=st.data())
def test_dispatch_invariants_over_a_run(world: World, data: st.DataObject) -> None:
    dispatcher = BaselineDispatcher()
    for _ in range(60):
        candidates = world.candidates()
        views = world.views()
        assignments = dispatcher.assign(candidates, views)
        by_key = {c.key: c for c in candidates}
        check_assignments(assignments, by_key, views)  # raises on any broken rule
        for a in assignments:
            c = by_key[a.key]
            device = views[a.device]
            # capable and set up
            assert c.process in device.processes and not unmet(device.setup, c.setup)
            # never two steps on one device, never a device kept for another step
            for d in (a.device, *a.reserves):
                assert d not in world.busy
                assert views[d].kept_for in (None, a.key)
                world.busy[d] = a.key
            # a step interrupted part-way resumes where it started
            assert c.only_on in (None, a.device)
            # route order kept
            s = world.step(a.key)
            if s.index:
                assert world.jobs[s.job][1][s.index - 1].state == "done"
            s.state, s.device, s.reserved = "running", a.device, a.reserves
            s.pinned = None
        if not assignments:
            # Nobody idles while some free device could run a waiting step.
            free = {d for d, v in views.items() if v.free}
            for c in candidates:
                for d in free:
                    reserves_ok = all(
                        r in free and r != d and views[r].kept_for in (None, c.key)
                        for r in c.reserves
                    )
                    if can_run(views[d], c) and reserves_ok:
                        raise AssertionError(f"{d} stayed idle although it could run {c.key}")
        running = sorted(set(world.busy.values()))
        if running:
            finished = data.draw(st.lists(st.sampled_from(running), unique=True))
            for key in finished:
                s = world.step(key)
                if data.draw(st.integers(0, 4)) == 0:
                    s.state, s.pinned = "queued", s.device  # interrupted: resume there
                else:
                    s.state = "done"
                for d in [d for d, k in world.busy.items() if k == key]:
                    del world.busy[d]
        if data.draw(st.booleans()):
            # an operator changes a setup between rounds
            d = data.draw(st.sampled_from(sorted(world.devices)))
            procs, _ = world.devices[d]
            world.devices[d] = (procs, {"material": data.draw(st.sampled_from(MATERIALS))})
        if not running and not assignments and not world.candidates():
            break


def test_priority_then_age_decide() -> None:
    dev = {"p": DeviceView("p", frozenset({"print"}), {}, True)}
    old_low = Candidate("a/0", "a", 0, seq=1, priority=0, process="print", setup={})
    new_high = Candidate("b/0", "b", 0, seq=2, priority=5, process="print", setup={})
    older_high = Candidate("c/0", "c", 0, seq=0, priority=5, process="print", setup={})
    got = BaselineDispatcher().assign([old_low, new_high, older_high], dev)
    assert got == [Assignment("c/0", "p")]


def test_check_assignments_names_the_broken_rule() -> None:
    views = {
        "p": DeviceView("p", frozenset({"print"}), {"material": "PLA"}, True),
        "busy": DeviceView("busy", frozenset({"print"}), {}, False),
    }
    c = Candidate("j/0", "j", 0, 0, 0, "print", {"material": "PETG"})
    with pytest.raises(DispatchViolation, match="material: needs PETG, loaded PLA"):
        check_assignments([Assignment("j/0", "p")], {"j/0": c}, views)
    m = Candidate("m/0", "m", 0, 0, 0, "mill", {})
    with pytest.raises(DispatchViolation, match="cannot do 'mill'"):
        check_assignments([Assignment("m/0", "p")], {"m/0": m}, views)
    ok = Candidate("k/0", "k", 0, 0, 0, "print", {})
    with pytest.raises(DispatchViolation, match="not free"):
        check_assignments([Assignment("k/0", "busy")], {"k/0": ok}, views)
    pinned = Candidate("r/0", "r", 0, 0, 0, "print", {}, only_on="busy")
    with pytest.raises(DispatchViolation, match="must run on busy, not p"):
        check_assignments([Assignment("r/0", "p")], {"r/0": pinned}, views)
    kept = {"p": DeviceView("p", frozenset({"print"}), {}, True, kept_for="r/0")}
    with pytest.raises(DispatchViolation, match="device p is not free"):
        check_assignments([Assignment("k/0", "p")], {"k/0": ok}, kept)
    assert BaselineDispatcher().assign([ok], kept) == []
    two = Candidate("t/0", "t", 0, 0, 0, "print", {})
    with pytest.raises(DispatchViolation, match="not free or used twice"):
        check_assignments(
            [Assignment("k/0", "p"), Assignment("t/0", "p")], {"k/0": ok, "t/0": two}, views
        )
