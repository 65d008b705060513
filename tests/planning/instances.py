"""Small planning problems for the tests: a hypothesis strategy, seeded ones, brute force."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

from hypothesis import strategies as st

from cellctl.planning import Figures, Job, Machine, Objective, Problem
from cellctl.planning.model import PREVIOUS

SETUPS = ("A", "B", "C")


def build(
    rng: random.Random,
    jobs: int,
    machines: int,
    objective: Objective,
    *,
    after: bool = True,
    release: bool = True,
    due: bool = True,
    free_at: bool = True,
    operators: bool = False,
    reserves: bool = False,
) -> Problem:
    """A random problem; `operators`: some changeovers manual, some jobs with bed
    clearing, and operator shifts of 20–60 every 100 (a lights-out cell in miniature)."""
    ms = [
        Machine(f"M{i}", rng.choice(SETUPS), rng.randint(0, 15) if free_at else 0)
        for i in range(machines)
    ]
    setup_times = {
        m.id: {a: {b: rng.randint(1, 12) for b in SETUPS if b != a} for a in SETUPS} for m in ms
    }
    js = []
    for k in range(jobs):
        capable = [m.id for m in ms if rng.random() < 0.75] or [rng.choice(ms).id]
        deps: tuple[str, ...] = ()
        if after and k and rng.random() < 0.35:
            deps = tuple(sorted({f"J{rng.randrange(k)}" for _ in range(rng.randint(1, 2))}))
        js.append(
            Job(
                id=f"J{k}",
                setup=rng.choice(SETUPS),
                durations={mid: rng.randint(1, 20) for mid in capable},
                release=rng.randint(0, 30) if release and rng.random() < 0.5 else 0,
                due=rng.randint(5, 60) if due and rng.random() < 0.8 else None,
                weight=rng.randint(0, 4),
                after=deps,
                clear=rng.choice((0, 0, 2, 5)) if operators else 0,
            )
        )
    if not operators:
        problem = Problem(objective, tuple(ms), setup_times, tuple(js))
    else:
        manual = frozenset(
            (m.id, a, b)
            for m in ms
            for a in SETUPS
            for b in SETUPS
            if a != b and rng.random() < 0.5
        )
        shifts = tuple(
            (100 * d + rng.randint(0, 30), 100 * d + rng.randint(50, 90)) for d in range(60)
        )
        problem = Problem(
            objective, tuple(ms), setup_times, tuple(js), manual=manual, shifts=shifts
        )
    return with_reserves(rng, problem) if reserves else problem


def with_reserves(rng: random.Random, problem: Problem) -> Problem:
    """Some jobs hold a machine they cannot run on (a robot that has no jobs of its
    own, `R`, or another machine), some with one `after` hold its machine (`@previous`)."""
    robot = Machine("R", SETUPS[0])
    ms = (*problem.machines, robot)
    js = []
    taken: set[str] = set()  # one holder per job
    for j in problem.jobs:
        held: list[str] = []
        others = [m.id for m in ms if m.id not in j.durations]
        if others and rng.random() < 0.3:
            held.append(rng.choice(others))
        if len(j.after) == 1 and j.after[0] not in taken and rng.random() < 0.5:
            held.append(PREVIOUS)
            taken.add(j.after[0])
        js.append(dataclasses.replace(j, reserves=tuple(held)))
    return dataclasses.replace(problem, machines=ms, jobs=tuple(js))


@st.composite
def problems(draw: st.DrawFn, max_jobs: int = 9, reserves: bool = False) -> Problem:
    seed = draw(st.integers(0, 2**32 - 1))
    jobs = draw(st.integers(0, max_jobs))
    machines = draw(st.integers(1, 3))
    objective = draw(st.sampled_from(list(Objective)))
    flags = draw(st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()))
    return build(
        random.Random(seed),
        jobs,
        machines,
        objective,
        after=flags[0],
        release=flags[1],
        free_at=flags[2],
        operators=flags[3],
        reserves=reserves,
    )


def semi_active(problem: Problem, seqs: Sequence[Sequence[str]]) -> Figures | None:
    """Figures of these machine sequences at their earliest times; None if they deadlock.

    Written apart from the planner's decoder on purpose: the brute force must
    not share the code it judges.
    """
    jobs = {j.id: j for j in problem.jobs}
    end: dict[str, int] = {}
    nxt = [0] * len(seqs)
    ready = [m.free_at for m in problem.machines]
    loaded = [m.initial_setup for m in problem.machines]
    changeover = 0
    while len(end) < sum(len(s) for s in seqs):
        moved = False
        for i, seq in enumerate(seqs):
            while nxt[i] < len(seq) and all(a in end for a in jobs[seq[nxt[i]]].after):
                job = jobs[seq[nxt[i]]]
                mid = problem.machines[i].id
                c = problem.changeover(mid, loaded[i], job.setup)
                co_start = ready[i]
                if problem.is_manual(mid, loaded[i], job.setup):
                    co_start = _earliest_in_shift(problem, ready[i], c)
                begin = max([co_start + c, job.release, *(end[a] for a in job.after)])
                end[job.id] = begin + job.durations[mid]
                ready[i], loaded[i] = end[job.id], job.setup
                if job.clear:
                    ready[i] = _earliest_in_shift(problem, end[job.id], job.clear) + job.clear
                changeover += c
                nxt[i] += 1
                moved = True
        if not moved:
            return None
    wt = sum(j.weight * max(0, end[j.id] - j.due) for j in problem.jobs if j.due is not None)
    return Figures(problem.objective, wt, changeover, max(end.values(), default=0))


def _earliest_in_shift(problem: Problem, t: int, d: int) -> int:
    if problem.shifts is None:
        return t
    return min(max(s, t) for s, e in problem.shifts if e - max(s, t) >= d)


def brute_force(problem: Problem) -> Figures:
    """The optimum over every assignment of jobs to capable machines and every order on each."""
    machines = [m.id for m in problem.machines]
    choices = [[i for i, mid in enumerate(machines) if mid in j.durations] for j in problem.jobs]
    best: Figures | None = None
    for assign in itertools.product(*choices):
        groups: list[list[str]] = [[] for _ in machines]
        for job, a in zip(problem.jobs, assign, strict=True):
            groups[a].append(job.id)
        for seqs in itertools.product(*(itertools.permutations(g) for g in groups)):
            f = semi_active(problem, seqs)
            if f is not None and (best is None or f.key < best.key):
                best = f
    assert best is not None
    return best
