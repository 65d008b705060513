"""The search machinery: incremental pricing equals a full decode; runs are reproducible."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planning.instances import build, problems

from cellctl.planning import Objective, Problem, plan
from cellctl.planning.instance import Instance, topological
from cellctl.planning.model import PREVIOUS
from cellctl.planning.solution import Solution


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_jobs=10), st.integers(0, 1000), st.booleans())
def test_priced_moves_equal_the_decoded_result(problem: Problem, seed: int, grouped: bool) -> None:
    inst = Instance(problem)
    if inst.n == 0:
        return
    grouped = grouped and not inst.coupled  # the instant method groups uncoupled problems only
    rng = random.Random(seed)
    seqs: list[list[int]] = [[] for _ in range(inst.m)]
    for j in range(inst.n):  # index order respects `after`: never deadlocks
        seqs[rng.choice(inst.capable[j])].append(j)
    sol = Solution(inst, seqs)
    assert sol.key() == inst.key_of(sol.seqs)
    for _ in range(6):
        j = rng.randrange(inst.n)
        sol.remove(j)
        found = sol.best_insertion(j, grouped)
        assert found is not None  # its old place at least
        key, m, pos = found
        sol.insert(j, m, pos)
        assert sol.key() == key == inst.key_of(sol.seqs)
        swap = sol.best_swap()
        if swap is not None:
            sol.swap(swap[1], swap[2])
            assert sol.key() == swap[0] == inst.key_of(sol.seqs)


def test_same_seed_same_plan_and_the_iteration_budget_is_kept() -> None:
    problem = build(random.Random(11), 40, 4, Objective.WEIGHTED_TARDINESS, after=False)
    a = plan(problem, "anytime", iterations=15, seed=3)
    b = plan(problem, "anytime", iterations=15, seed=3)
    assert a.sequences == b.sequences and a.figures == b.figures
    assert a.iterations == 15
    assert plan(problem, "instant").sequences == plan(problem, "instant").sequences


def test_anytime_beats_the_simple_rules_on_a_cell_sized_problem() -> None:
    problem = build(
        random.Random(5), 60, 4, Objective.WEIGHTED_TARDINESS, after=False, release=False
    )
    keys = {m: plan(problem, m, iterations=20).figures.key for m in ("fifo", "group", "anytime")}
    assert keys["anytime"] < keys["group"] and keys["anytime"] < keys["fifo"]


def test_a_deadline_on_an_injected_clock_ends_the_run() -> None:
    problem = build(random.Random(2), 30, 3, Objective.MAKESPAN, after=False)
    ticks = iter(range(10**6))
    got = plan(problem, "anytime", budget_s=40, seed=1, clock=lambda: float(next(ticks)))
    assert 0 < got.iterations < 40


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_jobs=12), st.integers(0, 1000))
def test_incremental_coupled_pricing_equals_the_full_decode(problem: Problem, seed: int) -> None:
    """Every place of a removed job: the Pricer's key is the full decode's, deadlock included."""
    _pricer_equals_decode(problem, seed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_jobs=12, reserves=True), st.integers(0, 1000))
def test_incremental_pricing_with_holds_equals_the_full_decode(problem: Problem, seed: int) -> None:
    """The same with `@previous` holds (graph edges; explicit reservations are not priced
    incrementally, so they are taken out here)."""
    jobs = tuple(
        dataclasses.replace(j, reserves=tuple(r for r in j.reserves if r == PREVIOUS))
        for j in problem.jobs
    )
    problem = dataclasses.replace(problem, jobs=jobs)
    assert Instance(problem).graph_only
    _pricer_equals_decode(problem, seed)


def _pricer_equals_decode(problem: Problem, seed: int) -> None:
    from cellctl.planning.coupled import Pricer

    inst = Instance(problem)
    if inst.n == 0:
        return
    rng = random.Random(seed)
    seqs: list[list[int]] = [[] for _ in range(inst.m)]
    # Appended in a topological order (a holder right after what it holds): no deadlock.
    for j in topological(inst, list(range(inst.n))):
        seqs[rng.choice(inst.capable[j])].append(j)
    assert inst.decode(seqs) is not None
    for _ in range(4):
        j = rng.randrange(inst.n)
        m0 = next(m for m, s in enumerate(seqs) if j in s)
        seqs[m0].remove(j)
        pricer = Pricer(inst)
        loaded = pricer.load(seqs)
        if any(seqs):  # (key_of's makespan of nothing placed is -1: no plan's)
            assert loaded == inst.key_of(seqs)
        for m in inst.capable[j]:
            for pos in range(len(seqs[m]) + 1):
                seqs[m].insert(pos, j)
                want = inst.key_of(seqs)
                del seqs[m][pos]
                assert pricer.price(j, m, pos) == want, (j, m, pos)
                # With a bound: the key if it beats the bound, else None.
                width = 2 if inst.makespan_only else 4
                for bound in (want, (0,) * width, (1 << 62,) * width):
                    if bound is not None:
                        got = pricer.price(j, m, pos, bound)
                        assert got == (want if want is not None and want < bound else None)
        # Somewhere random, even a place that deadlocks (then the next round's
        # sequences deadlock and every price must say None).
        m = rng.choice(inst.capable[j])
        seqs[m].insert(rng.randint(0, len(seqs[m])), j)
        if inst.decode(seqs) is None:
            return


def test_the_large_queue_search_is_reproducible_and_never_worse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above LARGE_JOBS the first descent visits the costliest jobs first, once, and an
    iteration's local search a bounded set: exercised here on a small queue."""
    from cellctl.planning import search

    monkeypatch.setattr(search, "LARGE_JOBS", 10)
    monkeypatch.setattr(search, "LARGE_TOUCH", 3)
    for after in (False, True):
        problem = build(random.Random(4), 40, 4, Objective.WEIGHTED_TARDINESS, after=after)
        start = plan(problem, "instant").figures.key
        a = plan(problem, "anytime", iterations=10, seed=2)
        b = plan(problem, "anytime", iterations=10, seed=2)
        assert a.sequences == b.sequences and a.iterations == 10
        assert a.figures.key <= start
