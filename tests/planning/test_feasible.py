"""Every method's plan is feasible, and the checker's figures equal the planner's own."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from planning.instances import problems

from cellctl.planning import METHODS, Assignment, Problem, ScheduleInvalid, check, plan

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_every_plan_is_feasible_and_its_figures_are_the_checkers(problem: Problem) -> None:
    for method in METHODS:
        got = plan(problem, method, iterations=4, seed=1)
        assert check(problem, got.assignments) == got.figures, method
        # The sequences and the timed assignments tell the same story.
        for mid, seq in got.sequences.items():
            timed = sorted((a for a in got.assignments if a.machine == mid), key=lambda a: a.start)
            assert tuple(a.job for a in timed) == seq, method


@SETTINGS
@given(problems(max_jobs=7))
def test_anytime_never_worse_than_where_it_starts(problem: Problem) -> None:
    start = plan(problem, "instant").figures.key
    for its in (0, 3, 12):
        got = plan(problem, "anytime", iterations=its, seed=7).figures.key
        assert got <= start
        start = got  # more iterations of the same run: the best so far never worsens


def _sample() -> Problem:
    import random

    from planning.instances import build

    from cellctl.planning import Objective

    return build(random.Random(3), 8, 2, Objective.WEIGHTED_TARDINESS)


def _mutated(problem: Problem, change: str) -> list[Assignment]:
    a = list(plan(problem, "instant").assignments)
    first = a[0]
    if change == "earlier":
        a[0] = dataclasses.replace(first, start=first.start - 1, end=first.end - 1)
    elif change == "longer":
        a[0] = dataclasses.replace(first, end=first.end + 1)
    elif change == "changeover":
        a[0] = dataclasses.replace(first, changeover=first.changeover + 1)
    elif change == "dropped":
        a.pop(0)
    elif change == "twice":
        a.append(first)
    elif change == "machine":
        other = next(m.id for m in problem.machines if m.id != first.machine)
        a[0] = dataclasses.replace(first, machine=other)
    return a


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("earlier", "overlap"),
        ("longer", "lasts"),
        ("changeover", "changeover"),
        ("dropped", "not placed"),
        ("twice", "placed twice"),
        ("machine", ""),
    ],
)
def test_checker_refuses_a_broken_plan(change: str, says: str) -> None:
    problem = _sample()
    with pytest.raises(ScheduleInvalid) as err:
        check(problem, _mutated(problem, change))
    assert says in str(err.value)


def test_checker_refuses_a_job_before_its_predecessor_or_release() -> None:
    from cellctl.planning import Job, Machine, Objective

    st = {"M1": {}, "M2": {}}
    p = Problem(
        Objective.MAKESPAN,
        (Machine("M1", "A"), Machine("M2", "A")),
        st,
        (Job("a", "A", {"M1": 5}), Job("b", "A", {"M2": 5}, release=2, after=("a",))),
    )
    bad = [
        Assignment("a", "M1", 0, 5, 0, "A", 0),
        Assignment("b", "M2", 1, 6, 0, "A", 1),
    ]
    with pytest.raises(ScheduleInvalid) as err:
        check(p, bad)
    lines = err.value.problems
    assert any("before its release 2" in x for x in lines)
    assert any("before a ends at 5" in x for x in lines)
    good = plan(p, "anytime", iterations=3)
    assert [(x.job, x.start) for x in good.assignments] == [("a", 0), ("b", 5)]
