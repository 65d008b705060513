"""One entry point for every method: `plan(problem, method, …) -> Plan`."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Final

from cellctl.planning import rules
from cellctl.planning.instance import Instance
from cellctl.planning.model import Plan, Problem
from cellctl.planning.search import Clock, iterated_greedy
from cellctl.planning.solution import Solution

METHODS: Final = ("fifo", "group", "greedy", "instant", "anytime")


def plan(
    problem: Problem,
    method: str = "anytime",
    *,
    budget_s: float | None = None,
    iterations: int | None = None,
    seed: int = 0,
    clock: Clock = time.perf_counter,
) -> Plan:
    """Plan `problem`. `anytime` needs `budget_s` or `iterations` (both: whichever ends first).

    The anytime method starts from the instant plan and returns the best it
    finds; a budget of 0 returns the instant plan improved by local search only.
    """
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
        start: Solution = rules.instant(inst)
        best, done = iterated_greedy(
            inst, start, seed=seed, iterations=iterations, deadline=deadline, clock=clock
        )
        seqs = best.seqs
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    result = inst.to_plan(seqs, method, iterations=done)
    return replace(result, elapsed_s=clock() - t0)
