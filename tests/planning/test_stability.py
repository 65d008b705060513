"""Re-planning: pinned (started or announced) jobs keep their places; same seed, same plan."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planning.instances import build, problems

from cellctl.planning import (
    METHODS,
    Job,
    Machine,
    Objective,
    Problem,
    ProblemInvalid,
    ScheduleInvalid,
    check,
    parse_problem,
    plan,
)


def _pin_heads(problem: Problem, k: int) -> Problem:
    """The problem with the first k jobs of each machine's plan pinned."""
    first = plan(problem, "anytime", iterations=5, seed=0)
    return dataclasses.replace(
        problem, pinned={m: seq[:k] for m, seq in first.sequences.items() if seq[:k]}
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.integers(1, 3))
def test_pinned_jobs_open_their_machines_in_every_method(problem: Problem, k: int) -> None:
    pinned = _pin_heads(problem, k)
    for method in METHODS:
        got = plan(pinned, method, iterations=4, seed=3)
        assert check(pinned, got.assignments) == got.figures  # the checker enforces pins
        for m, pins in pinned.pinned.items():
            assert got.sequences[m][: len(pins)] == pins


def test_a_tiny_change_does_not_reorder_the_announced_part() -> None:
    problem = build(random.Random(9), 30, 3, Objective.WEIGHTED_TARDINESS, after=False)
    announced = _pin_heads(problem, 4)
    before = plan(announced, "anytime", iterations=30, seed=5)
    # Unchanged problem, same seed: the same plan.
    assert plan(announced, "anytime", iterations=30, seed=5).sequences == before.sequences
    # One urgent job arrives and one due date moves: the announced heads stay.
    urgent = Job("rush", "A", {m.id: 5 for m in problem.machines}, due=1, weight=9)
    jobs = (dataclasses.replace(announced.jobs[0], due=2), *announced.jobs[1:], urgent)
    after = plan(dataclasses.replace(announced, jobs=jobs), "anytime", iterations=30, seed=5)
    for m, pins in announced.pinned.items():
        assert after.sequences[m][: len(pins)] == pins


def test_pins_give_way_only_when_a_free_plan_is_better_by_the_margin() -> None:
    st_ = {"M": {"A": {"B": 1}, "B": {"A": 1}}}
    jobs = (Job("slow", "A", {"M": 50}, due=500), Job("urgent", "B", {"M": 5}, due=5, weight=5))
    problem = Problem(
        Objective.WEIGHTED_TARDINESS, (Machine("M", "A"),), st_, jobs, pinned={"M": ("slow",)}
    )
    kept = plan(problem, "anytime", iterations=10)
    assert kept.sequences["M"] == ("slow", "urgent")  # late by 51: tardiness 255
    freed = plan(problem, "anytime", iterations=10, unpin_margin=0.5)
    assert freed.sequences["M"] == ("urgent", "slow")  # tardiness 5: better by far more than 50 %
    with pytest.raises(ScheduleInvalid, match="must open with slow"):
        check(problem, freed.assignments)
    small = dataclasses.replace(problem, jobs=(jobs[0], dataclasses.replace(jobs[1], due=52)))
    # Pinned: urgent ends at 56, 4 late × 5 = 20; free: 0. A 100 % margin keeps the pin.
    assert plan(small, "anytime", iterations=10, unpin_margin=1.0).sequences["M"][0] == "slow"


@pytest.mark.parametrize(
    ("pinned", "line"),
    [
        ({"P9": ["J1"]}, "pinned.P9: unknown machine P9"),
        ({"P1": ["J9"]}, 'pinned.P1[0]: unknown job "J9"'),
        ({"P1": ["J2"]}, "pinned.P1[0]: P1 cannot run J2"),
        ({"P1": ["J1", "J1"]}, "pinned.P1[1]: J1 is pinned twice"),
        ({"P1": ["J3", "J1"]}, "pinned: the pinned orders contradict `after`"),
    ],
)
def test_pinned_mistakes_are_one_line(pinned: dict[str, list[str]], line: str) -> None:
    doc = {
        "objective": "makespan",
        "machines": [{"id": "P1", "initial_setup": "A"}, {"id": "P2", "initial_setup": "A"}],
        "setup_times": {},
        "jobs": [
            {"id": "J1", "setup": "A", "durations": {"P1": 5}},
            {"id": "J2", "setup": "A", "durations": {"P2": 5}},
            {"id": "J3", "setup": "A", "durations": {"P1": 5}, "after": ["J1"]},
        ],
        "pinned": pinned,
    }
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(doc)
    assert line in err.value.problems


def test_a_job_a_pinned_job_waits_for_never_goes_after_that_pin() -> None:
    """J7 is pinned at the head of M2 and waits for J4; M2 is free long before M0. A
    list schedule must not give J4 to M2 (after J7): it goes to M0."""
    p = Problem(
        Objective.WEIGHTED_TARDINESS,
        (Machine("M0", "A", free_at=100), Machine("M2", "A")),
        {},
        (Job("J4", "A", {"M0": 5, "M2": 5}), Job("J7", "A", {"M2": 5}, after=("J4",))),
        pinned={"M2": ("J7",)},
    )
    for method in METHODS:
        got = plan(p, method, iterations=3)
        check(p, got.assignments)
        assert got.sequences["M0"] == ("J4",), method


def test_pins_no_plan_can_keep_are_refused() -> None:
    raw = {
        "objective": "makespan",
        "machines": [{"id": "M2", "initial_setup": "A"}],
        "setup_times": {},
        "jobs": [
            {"id": "J4", "setup": "A", "durations": {"M2": 5}},
            {"id": "J7", "setup": "A", "durations": {"M2": 5}, "after": ["J4"]},
        ],
        "pinned": {"M2": ["J7"]},
    }
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(raw)
    assert "pinned: pinned jobs wait for J4" in str(err.value)
