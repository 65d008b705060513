"""One entry point for every method: `plan(problem, method, …) -> Plan`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from cellctl.planning import rules
from cellctl.planning.calendar import BEYOND, OutsideCalendar
from cellctl.planning.instance import Instance
from cellctl.planning.methods import METHODS
from cellctl.planning.model import Plan, Problem
from cellctl.planning.search import Clock, iterated_greedy
from cellctl.planning.solution import Solution


def plan(
    problem: Problem,
    method: str = "anytime",
    *,
    budget_s: float | None = None,
    iterations: int | None = None,
    seed: int = 0,
    clock: Clock = time.perf_counter,
    unpin_margin: float | None = None,
    start: Mapping[str, Sequence[str]] | None = None,
) -> Plan:
    """Plan `problem`. `anytime` needs `budget_s` or `iterations` (both: whichever ends first).

    The anytime method starts from the instant plan and returns the best it
    finds; a budget of 0 returns the instant plan improved by local search only.

    Pinned jobs (`Problem.pinned`: started, or announced to an operator) keep
    their places, unless `unpin_margin` is given and a plan free of pins is
    better by more than that fraction on the objective's first figure
    (weighted tardiness, or makespan): then the budget is shared between the
    two plans, and the free one wins only by that margin.

    `start` (anytime only): the sequences of an earlier plan (job ids per
    machine id) to improve instead of building the instant plan, so a re-plan
    spends its whole budget improving. Jobs and machines the problem no longer
    has are dropped, pinned jobs open their machines as pinned, and jobs the
    start lacks (or places a machine cannot run) are inserted at their best
    places; a start that contradicts `after` falls back to the instant plan.
    """
    if unpin_margin is not None and any(problem.pinned.values()):
        half_b = None if budget_s is None else budget_s / 2
        half_i = None if iterations is None else max(1, iterations // 2)
        t0 = clock()
        kept = plan(
            problem,
            method,
            budget_s=half_b,
            iterations=half_i,
            seed=seed,
            clock=clock,
            start=start,
        )
        free = plan(
            replace(problem, pinned={}),
            method,
            budget_s=half_b,
            iterations=half_i,
            seed=seed,
            clock=clock,
            start=start,
        )
        better = free.figures.key[0] < kept.figures.key[0] * (1 - unpin_margin)
        return replace(free if better else kept, elapsed_s=clock() - t0)
    t0 = clock()
    inst = Instance(problem)
    done = 0
    if method == "fifo":
        seqs = rules.fifo(inst)
    elif method == "group":
        seqs = rules.group(inst)
    elif method == "greedy":
        seqs = rules.greedy(inst)
    elif method == "instant":
        seqs = rules.instant(inst).seqs
    elif method == "anytime":
        if budget_s is None and iterations is None:
            raise ValueError("the anytime method needs budget_s or iterations")
        deadline = None if budget_s is None else t0 + budget_s
        first = _warm(inst, start) if start is not None else None
        if first is None:
            first = rules.instant(inst)
        best, done = iterated_greedy(
            inst, first, seed=seed, iterations=iterations, deadline=deadline, clock=clock
        )
        seqs = best.seqs
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    result = _within_calendar(problem, inst.to_plan(seqs, method, iterations=done))
    return replace(result, elapsed_s=clock() - t0)


def _warm(inst: Instance, start: Mapping[str, Sequence[str]]) -> Solution | None:
    """The earlier plan's sequences as a solution of this problem (see `plan`'s `start`)."""
    jidx = {j: k for k, j in enumerate(inst.job_ids)}
    pinned = {j for s in inst.pinned_seqs for j in s}
    seqs = [list(s) for s in inst.pinned_seqs]
    placed = set(pinned)
    for m, mid in enumerate(inst.machine_ids):
        for jid in start.get(mid, ()):
            j = jidx.get(jid, -1)
            if j >= 0 and j not in placed and inst.p[m][j] >= 0:
                seqs[m].append(j)
                placed.add(j)
    if inst.coupled and inst.decode(seqs) is None:
        return None
    sol = Solution(inst, seqs)
    for j in rules.urgency_order(inst):
        if j not in placed:
            found = sol.best_insertion(j)
            if found is None:
                return None
            sol.insert(j, found[1], found[2], found[0])
    return sol


def _within_calendar(problem: Problem, result: Plan) -> Plan:
    if problem.shifts is None:
        return result
    if any(a.end >= BEYOND or (a.clear_start or 0) >= BEYOND for a in result.assignments):
        raise OutsideCalendar(
            "the plan needs an operator after the calendar's last shift: "
            "extend calendar.horizon_days"
        )
    return result


def evaluate(
    problem: Problem, sequences: Mapping[str, Sequence[str]], method: str = "given"
) -> Plan:
    """The plan of these machine sequences (job ids per machine id) at their earliest times.

    Used to run one problem's plan under another's rules, e.g. a plan made
    without the operator calendar, with its manual work pushed into shifts.
    Raises ValueError if the sequences are not a plan of `problem`'s jobs.
    """
    inst = Instance(problem)
    index = {j: k for k, j in enumerate(inst.job_ids)}
    seqs = [[index[j] for j in sequences.get(m, ())] for m in inst.machine_ids]
    if sorted(j for s in seqs for j in s) != list(range(inst.n)):
        raise ValueError("the sequences do not hold every job exactly once")
    if inst.decode(seqs) is None:
        raise ValueError("the sequences deadlock with `after`")
    return _within_calendar(problem, inst.to_plan(seqs, method))
