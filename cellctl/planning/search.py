"""The anytime improvement: iterated greedy with insertion local search.

After Ruiz & Stützle's iterated greedy (EJOR 2007), in the form Fanjul-Peyro &
Ruiz (EJOR 2010) and Vallada & Ruiz (EJOR 2011) apply to unrelated parallel
machines with sequence-dependent setup times. One iteration:
1. destruction: take d jobs out (2 ≤ d ≤ 6; half from the machine that costs
   the most, the rest at random);
2. construction: put each back at its best place on any capable machine;
3. local search: insertion moves (a job to the best place on any machine)
   until none improves; for the makespan also exchanges of a job on the
   latest machine with a job on another (Fanjul-Peyro & Ruiz's interchange);
4. acceptance: keep the result if it is better, or with a small probability
   if it is slightly worse (simulated-annealing-like, relative to the current
   cost), so the search leaves local optima; the best plan is kept apart and
   never worsens.
Budgets: a number of iterations (tests: deterministic for a seed) or a
deadline on an injected clock (the CLI and the benchmark).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from cellctl.planning.instance import Instance
from cellctl.planning.solution import Solution

Clock = Callable[[], float]

# Above this many jobs, an iteration's local search visits only the jobs the
# destruction touched and those of the costliest machine, once: a full pass
# over hundreds of jobs would leave too few iterations in a few seconds.
FULL_LS_JOBS = 80
# Above this many jobs (a re-plan of a large queue), one insertion pass over
# every job takes seconds: the first descent visits the jobs that cost the
# most first (largest weighted tardiness; latest end for the makespan), so the
# plan improves from the first moves, and an iteration's local search visits
# only the costliest machine's LARGE_TOUCH costliest jobs besides those moved.
LARGE_JOBS = 1000
LARGE_TOUCH = 20
TEMPERATURE = 0.01  # a 1 % worse plan is accepted with probability 1/e


def local_search(
    sol: Solution,
    jobs: Sequence[int],
    *,
    work_limit: int | None = None,
    deadline: float | None = None,
    clock: Clock | None = None,
    passes: int | None = None,
) -> int:
    """Insertion moves over `jobs` until none improves (or a limit); returns positions priced."""
    inst = sol.inst
    work = 0
    done = 0
    improved = True
    while improved and (passes is None or done < passes):
        improved = False
        done += 1
        for j in jobs:
            cur = sol.key()
            m0 = sol.where[j]
            pos0 = sol.seqs[m0].index(j)
            sol.remove(j)
            found = sol.best_insertion(j)
            work += sum(len(sol.seqs[m]) + 1 for m in inst.capable[j])
            if found is not None and found[0] < cur:
                sol.insert(j, found[1], found[2], found[0])
                improved = True
            else:
                sol.insert(j, m0, pos0, cur)
            if work_limit is not None and work > work_limit:
                return work
            if deadline is not None and clock is not None and clock() > deadline:
                return work
    return work


def descend(
    sol: Solution,
    jobs: Sequence[int],
    *,
    deadline: float | None = None,
    clock: Clock | None = None,
    passes: int | None = None,
) -> None:
    """Insertion local search, then (makespan) exchanges, until neither improves."""
    while True:
        local_search(sol, jobs, deadline=deadline, clock=clock, passes=passes)
        swapped = False
        while (found := sol.best_swap()) is not None and found[0] < sol.key():
            sol.swap(found[1], found[2])
            swapped = True
        if not swapped or (deadline is not None and clock is not None and clock() > deadline):
            return


def _costliest_machine(sol: Solution) -> int:
    """The machine to take jobs from: the most tardy one, else the latest to finish.

    A coupled solution keeps no per-machine costs: there, the busiest by job count.
    """
    inst = sol.inst
    if inst.coupled:
        return max(range(inst.m), key=lambda m: len(sol.seqs[m]))
    if inst.makespan_only or sum(c[0] for c in sol.cost) == 0:
        return max(range(inst.m), key=lambda m: sol.cost[m][2] if sol.seqs[m] else -1)
    return max(range(inst.m), key=lambda m: sol.cost[m][0])


def _job_costs(inst: Instance, sol: Solution, jobs: Sequence[int] | None = None) -> list[int]:
    """Per job, what it costs: its weighted tardiness (its end, for the makespan)."""
    end = [0] * inst.n
    if inst.coupled:
        timing = inst.decode(sol.seqs)
        assert timing is not None
        end = timing.end
    else:  # the machines' own arrays
        for m, seq in enumerate(sol.seqs):
            for j, e in zip(seq, sol.C[m], strict=True):
                end[j] = e
    out = [0] * inst.n
    for j in range(inst.n) if jobs is None else jobs:
        late = end[j] - inst.due[j]
        out[j] = end[j] if inst.makespan_only else inst.weight[j] * max(late, 0)
    return out


def _reinsert(sol: Solution, jobs: list[int]) -> bool:
    for j in jobs:
        found = sol.best_insertion(j)
        if found is None:
            return False
        sol.insert(j, found[1], found[2], found[0])
    return True


def _worse_by(new: tuple[int, ...], cur: tuple[int, ...], width: int) -> float:
    for a, b in zip(new[:width], cur[:width], strict=True):
        if a != b:
            return (a - b) / max(abs(b), 1)
    return 0.0


def iterated_greedy(
    inst: Instance,
    start: Solution,
    *,
    seed: int = 0,
    iterations: int | None = None,
    deadline: float | None = None,
    clock: Clock | None = None,
) -> tuple[Solution, int]:
    """The best solution found from `start`, and the iterations run."""
    if iterations is None and (deadline is None or clock is None):
        raise ValueError("iterated_greedy needs an iteration budget or a deadline and a clock")
    rng = random.Random(seed)
    width = 1 if inst.makespan_only else 3  # the objective's own components
    everyone = list(inst.movable)  # pinned jobs never move
    cur = start.copy()
    order = everyone[:]
    rng.shuffle(order)
    large = inst.n > LARGE_JOBS
    if large:
        cost = _job_costs(inst, cur)
        order.sort(key=lambda j: -cost[j])  # stable: the shuffle breaks ties
        local_search(cur, order, deadline=deadline, clock=clock, passes=1)
    else:
        descend(cur, order, deadline=deadline, clock=clock)
    best = cur.copy()
    done = 0
    if len(everyone) < 2:
        return best, done
    while True:
        if iterations is not None and done >= iterations:
            break
        if deadline is not None and clock is not None and clock() > deadline:
            break
        done += 1
        new = cur.copy()
        d = rng.randint(2, min(6, len(everyone)))
        worst = _costliest_machine(new)
        pool = new.seqs[worst][inst.pin_len[worst] :]
        removed = rng.sample(pool, min(len(pool), d // 2))
        rest = [j for j in everyone if j not in removed]
        removed += rng.sample(rest, d - len(removed))
        for j in removed:
            new.remove(j)
        rng.shuffle(removed)
        if inst.coupled:
            # Predecessors first, so that a job goes back after what it waits for.
            removed.sort(key=lambda j: inst.topo_rank[j])
        if not _reinsert(new, removed):
            continue  # every place deadlocks for some job: give this iteration up
        if inst.n <= FULL_LS_JOBS:
            order = everyone[:]
            rng.shuffle(order)
            descend(new, order, deadline=deadline, clock=clock)
        else:
            costly = _costliest_machine(new)
            pool = [j for j in new.seqs[costly][inst.pin_len[costly] :] if j not in removed]
            if large:
                cost = _job_costs(inst, new, pool)
                pool = sorted(pool, key=lambda j: -cost[j])[:LARGE_TOUCH]
            touched = removed + pool
            descend(new, touched, deadline=deadline, clock=clock, passes=1)
        nk, ck = new.key(), cur.key()
        if nk < ck:
            cur = new
            if nk < best.key():
                best = new.copy()
        else:
            worse = _worse_by(nk, ck, width)
            if worse == 0.0 or rng.random() < math.exp(-worse / TEMPERATURE):
                cur = new
    return best, done
