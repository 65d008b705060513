"""A re-plan that starts from an earlier plan (`plan(..., start=...)`)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import HealthCheck, given, settings
from planning.instances import build, problems

from cellctl.planning import Objective, Problem, check, plan

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(max_jobs=8))
def test_a_warm_start_is_never_made_worse(problem: Problem) -> None:
    earlier = plan(problem, "instant")
    got = plan(problem, "anytime", iterations=3, seed=1, start=earlier.sequences)
    assert check(problem, got.assignments) == got.figures
    assert got.figures.key <= earlier.figures.key
    again = plan(problem, "anytime", iterations=3, seed=1, start=earlier.sequences)
    assert again.sequences == got.sequences


@SETTINGS
@given(problems(max_jobs=8, reserves=True))
def test_a_stale_start_still_gives_a_whole_feasible_plan(problem: Problem) -> None:
    """The start names jobs and machines that are gone, puts a job where it cannot run,
    lacks jobs, and may contradict `after`: the plan still holds every job."""
    earlier = plan(problem, "fifo").sequences
    rng = random.Random(len(problem.jobs))
    stale = {m: [*reversed(seq), "gone"] for m, seq in earlier.items()}
    stale["no-such-machine"] = [j.id for j in problem.jobs]
    if problem.jobs:
        dropped = rng.choice(problem.jobs).id
        stale = {m: [j for j in seq if j != dropped] for m, seq in stale.items()}
    got = plan(problem, "anytime", iterations=2, start=stale)
    assert check(problem, got.assignments) == got.figures
    assert sorted(a.job for a in got.assignments) == sorted(j.id for j in problem.jobs)


def test_a_warm_start_keeps_the_pins() -> None:
    problem = build(random.Random(8), 12, 3, Objective.WEIGHTED_TARDINESS, after=False)
    first = plan(problem, "instant")
    m0 = problem.machines[0].id
    pins = tuple(reversed(first.sequences[m0]))[:2]
    pinned = dataclasses.replace(problem, pinned={m0: pins})
    got = plan(pinned, "anytime", iterations=5, start=first.sequences)
    assert got.sequences[m0][: len(pins)] == pins
    check(pinned, got.assignments)
