"""The planner optimises exactly the stated objective: brute-force optima on tiny problems."""

from __future__ import annotations

import random

import pytest
from planning.instances import brute_force, build

from cellctl.planning import Job, Machine, Objective, Problem, check, plan

CASES = [
    (seed, objective, jobs, machines, operators)
    for seed in range(6)
    for objective in Objective
    for jobs, machines in ((5, 2), (6, 2), (5, 3))
    for operators in (False, True)
]


@pytest.mark.parametrize(("seed", "objective", "jobs", "machines", "operators"), CASES)
def test_anytime_finds_the_brute_force_optimum(
    seed: int, objective: Objective, jobs: int, machines: int, operators: bool
) -> None:
    """`operators`: with manual changeovers, bed clearing and operator shifts too."""
    rng = random.Random(seed * 31 + jobs)
    problem = build(rng, jobs, machines, objective, operators=operators)
    best = brute_force(problem)
    got = plan(problem, "anytime", iterations=60, seed=seed)
    assert check(problem, got.assignments) == got.figures
    assert got.figures.key == best.key


def _two_jobs(objective: Objective) -> Problem:
    """One machine loaded with A; a B job due early and an A job due late.

    Running A first saves the changeover back (A→B only, 10) but makes B late.
    """
    m = Machine("M", "A")
    st = {"M": {"A": {"B": 10}, "B": {"A": 10}}}
    jobs = (
        Job("late-ok", "A", {"M": 10}, due=100),
        Job("urgent", "B", {"M": 10}, due=15, weight=3),
    )
    return Problem(objective, (m,), st, jobs)


def test_tardiness_outranks_changeover() -> None:
    problem = _two_jobs(Objective.WEIGHTED_TARDINESS)
    for method in ("instant", "greedy"):
        got = plan(problem, method)
        assert got.sequences["M"] == ("urgent", "late-ok"), method
        # urgent ends at 20 (changeover 10 + 10): 3 × 5 late; two changeovers.
        assert (got.figures.weighted_tardiness, got.figures.changeover) == (15, 20)
    # A plan with one changeover exists, and it is worse for this objective:
    ab = brute_force(problem)
    assert ab.key == (15, 20, 40)


def test_changeover_breaks_tardiness_ties_and_makespan_objective_ignores_tardiness() -> None:
    # Nothing due: tardiness 0 everywhere, so the fewest changeovers win.
    problem = _two_jobs(Objective.WEIGHTED_TARDINESS)
    relaxed = Problem(
        problem.objective,
        problem.machines,
        problem.setup_times,
        tuple(Job(j.id, j.setup, j.durations) for j in problem.jobs),
    )
    got = plan(relaxed, "anytime", iterations=10)
    assert got.sequences["M"] == ("late-ok", "urgent")
    assert got.figures.key == (0, 10, 30)
    mk = plan(Problem(Objective.MAKESPAN, *_parts(problem)), "anytime", iterations=10)
    assert mk.figures.key == (30,) and mk.figures.weighted_tardiness == 3 * 15


def _parts(p: Problem) -> tuple[object, ...]:
    return (p.machines, p.setup_times, p.jobs)
