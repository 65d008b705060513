"""Reservations (`reserves`): devices held while a job runs; `@previous` keeps a machine."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planning.instances import problems

from cellctl.cli import main
from cellctl.planning import (
    METHODS,
    Assignment,
    Job,
    Machine,
    Objective,
    Problem,
    ProblemInvalid,
    ScheduleInvalid,
    check,
    parse_problem,
    plan,
    plan_to_json,
)
from cellctl.planning.instance import Instance
from cellctl.planning.model import PREVIOUS

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _intervals(problem: Problem, assignments: tuple[Assignment, ...]) -> None:
    """No two things a device does or holds overlap (independent of the checker)."""
    jobs = {j.id: j for j in problem.jobs}
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for a in assignments:
        spans.setdefault(a.machine, []).append((a.changeover_start, a.end, a.job))
        job = jobs[a.job]
        if job.clear and a.clear_start is not None:
            spans[a.machine].append((a.clear_start, a.clear_start + job.clear, a.job))
        for d, f, t in a.reserved:
            spans.setdefault(d, []).append((f, t, a.job))
    for d, xs in spans.items():
        reach, owner = -1, ""  # the latest end so far, and whose
        for s, e, j in sorted(x for x in xs if x[1] > x[0]):
            assert s >= reach or j == owner, f"{d}: {owner} and {j} overlap"
            if e > reach:
                reach, owner = e, j


@SETTINGS
@given(problems(reserves=True))
def test_every_plan_with_reservations_is_feasible(problem: Problem) -> None:
    for method in METHODS:
        got = plan(problem, method, iterations=4, seed=1)
        assert check(problem, got.assignments) == got.figures, method
        _intervals(problem, got.assignments)
        # Each explicit reservation is held over the job's run.
        by_job = {a.job: a for a in got.assignments}
        for j in problem.jobs:
            a = by_job[j.id]
            for d in j.reserves:
                if d != PREVIOUS:
                    assert (d, a.start, a.end) in a.reserved


@SETTINGS
@given(problems(max_jobs=8, reserves=True), st.integers(0, 2**32 - 1))
def test_the_checker_accepts_every_decoded_plan(problem: Problem, seed: int) -> None:
    """Any sequences at all: the decoder either says they deadlock or times them feasibly."""
    rng = random.Random(seed)
    inst = Instance(problem)
    seqs: list[list[int]] = [[] for _ in range(inst.m)]
    for j in rng.sample(range(inst.n), inst.n):
        seqs[rng.choice(inst.capable[j])].append(j)
    if inst.decode(seqs) is None:
        return
    got = inst.to_plan(seqs, "given")
    assert check(problem, got.assignments) == got.figures
    _intervals(problem, got.assignments)


def _cell() -> Problem:
    """A mill tended by robot R; a print on P unloaded by R (`@previous`); a second print."""
    ms = (Machine("CNC", "F1"), Machine("P", "PLA"), Machine("R", "grip"))
    jobs = (
        Job("mill", "F1", {"CNC": 30}, reserves=("R",)),
        Job("print1", "PLA", {"P": 10}),
        Job("unload", "grip", {"R": 5}, after=("print1",), reserves=(PREVIOUS,)),
        Job("print2", "PLA", {"P": 10}),
    )
    return Problem(Objective.MAKESPAN, ms, {}, jobs)


def test_a_tended_machine_and_an_unload_hold_their_devices() -> None:
    problem = _cell()
    got = plan(problem, "anytime", iterations=20)
    check(problem, got.assignments)
    a = {x.job: x for x in got.assignments}
    # The robot tends the mill for its whole run, so the unload waits for it (or the
    # mill waits for the unload); print2 never starts before print1 is unloaded.
    assert a["mill"].reserved == (("R", a["mill"].start, a["mill"].end),)
    mill, unload = a["mill"], a["unload"]
    assert unload.start >= mill.end or mill.start >= unload.end
    if a["print2"].start > a["print1"].start:
        assert a["print2"].changeover_start >= unload.end
        assert unload.reserved == (("P", a["print1"].end, unload.end),)


def test_the_checker_refuses_a_plan_that_overlaps_a_reservation() -> None:
    problem = _cell()
    ok = [
        Assignment("print1", "P", 0, 10, 0, "PLA", 0),
        Assignment("mill", "CNC", 0, 30, 0, "F1", 0),
        Assignment("unload", "R", 30, 35, 0, "grip", 30),
        Assignment("print2", "P", 35, 45, 0, "PLA", 35),
    ]
    assert check(problem, ok).makespan == 45
    robot_busy = [*ok[:2], dataclasses.replace(ok[2], start=20, end=25, changeover_start=20)]
    robot_busy.append(ok[3])
    with pytest.raises(ScheduleInvalid) as err:
        check(problem, robot_busy)
    assert "mill: holds R over [0, 30), but unload runs there [20, 25)" in str(err.value)
    printer_busy = [*ok[:3], dataclasses.replace(ok[3], start=10, end=20, changeover_start=10)]
    with pytest.raises(ScheduleInvalid) as err:
        check(problem, printer_busy)
    assert "unload: holds P over [10, 35), but print2 runs there [10, 20)" in str(err.value)


def test_an_unload_on_the_printer_itself_allows_nothing_between() -> None:
    ms = (Machine("P", "A"),)
    jobs = (
        Job("print", "A", {"P": 10}),
        Job("other", "A", {"P": 10}),
        Job("take", "A", {"P": 2}, after=("print",), reserves=(PREVIOUS,)),
    )
    problem = Problem(Objective.MAKESPAN, ms, {}, jobs)
    inst = Instance(problem)
    assert inst.decode([[0, 1, 2]]) is None  # `other` between: the part is still there
    assert inst.decode([[0, 2, 1]]) is not None
    bad = [
        Assignment("print", "P", 0, 10, 0, "A", 0),
        Assignment("other", "P", 10, 20, 0, "A", 10),
        Assignment("take", "P", 20, 22, 0, "A", 20),
    ]
    with pytest.raises(ScheduleInvalid, match="take: holds P over"):
        check(problem, bad)
    got = plan(problem, "anytime", iterations=5)
    assert got.sequences["P"] == ("print", "take", "other")


def _raw() -> dict[str, object]:
    return {
        "objective": "makespan",
        "machines": [
            {"id": "CNC", "initial_setup": "F1"},
            {"id": "P", "initial_setup": "PLA"},
            {"id": "R", "initial_setup": "grip"},
        ],
        "setup_times": {},
        "jobs": [
            {"id": "mill", "setup": "F1", "durations": {"CNC": 30}, "reserves": ["R"]},
            {"id": "print1", "setup": "PLA", "durations": {"P": 10}},
            {
                "id": "unload",
                "setup": "grip",
                "durations": {"R": 5},
                "after": ["print1"],
                "reserves": ["@previous"],
            },
        ],
    }


def test_the_format_reads_reserves_and_the_plan_shows_them() -> None:
    problem = parse_problem(_raw())
    assert problem.jobs[0].reserves == ("R",)
    assert problem.jobs[2].reserves == (PREVIOUS,)
    out = plan_to_json(problem, plan(problem, "instant"))
    mill = next(j for j in out["jobs"] if j["id"] == "mill")
    assert mill["reserved"] == [{"device": "R", "from": mill["start"], "to": mill["end"]}]
    assert "reserved" not in next(j for j in out["jobs"] if j["id"] == "print1")


@pytest.mark.parametrize(
    ("job", "reserves", "says"),
    [
        (0, ["X"], 'jobs[0] (mill).reserves[0]: unknown machine "X"'),
        (0, ["CNC"], "jobs[0] (mill).reserves[0]: CNC may run this job"),
        (0, ["@previous"], "jobs[0] (mill).reserves[0]: @previous needs exactly one job in after"),
        (0, ["R", "R"], 'jobs[0] (mill).reserves[1]: "R" is reserved twice'),
        (2, "R", "jobs[2] (unload).reserves: expected a list of machine ids"),
        (0, [3], "jobs[0] (mill).reserves[0]: unknown machine 3"),
    ],
)
def test_bad_reserves_are_named(job: int, reserves: object, says: str) -> None:
    raw = _raw()
    raw["jobs"][job]["reserves"] = reserves  # type: ignore[index]
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(raw)
    assert says in err.value.problems[0]


def test_one_job_has_one_holder() -> None:
    raw = _raw()
    jobs = raw["jobs"]
    jobs.append(  # type: ignore[attr-defined]
        {
            "id": "unload2",
            "setup": "grip",
            "durations": {"R": 5},
            "after": ["print1"],
            "reserves": ["@previous"],
        }
    )
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(raw)
    assert err.value.problems == [
        "jobs (unload2).reserves: @previous holds print1's machine, which unload already "
        "holds (one holder per job)"
    ]


def test_the_cli_reads_reserves_and_both_schemas_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schemas = Path(__file__).resolve().parents[2] / "cellctl" / "schemas"
    raw = _raw()
    jsonschema.validate(raw, json.loads((schemas / "problem.json").read_text()))
    f = tmp_path / "p.json"
    f.write_text(json.dumps(raw))
    assert main(["plan", "--problem", str(f), "--method", "instant"]) == 0
    assert "(holds R " in capsys.readouterr().out
    assert main(["plan", "--problem", str(f), "--budget-s", "0.05", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, json.loads((schemas / "plan.json").read_text()))
    assert any(j.get("reserved") for j in doc["jobs"])


def test_two_machines_each_unloaded_by_the_other_do_not_stall() -> None:
    """A print on each machine, each unloaded by a step only the other machine runs:
    giving both machines a print first would hold each for an unload the other runs."""
    ms = (Machine("P", "A"), Machine("Q", "A"))
    jobs = (
        Job("p1", "A", {"P": 10}),
        Job("q1", "A", {"Q": 10}),
        Job("u1", "A", {"Q": 2}, after=("p1",), reserves=(PREVIOUS,)),
        Job("v1", "A", {"P": 2}, after=("q1",), reserves=(PREVIOUS,)),
    )
    problem = Problem(Objective.MAKESPAN, ms, {}, jobs)
    for method in METHODS:
        got = plan(problem, method, iterations=5)
        check(problem, got.assignments)
