"""A problem compiled to integer indices, and the one decoder every method shares.

A solution is a sequence of job indices per machine. Decoding it gives the
earliest (semi-active) times: a job starts at the latest of its machine's
previous end plus the changeover, its release, and the ends of its `after`
jobs. All three objectives are regular (never better when a job ends later),
so for a given set of sequences no other timing is better: searching over
sequences searches over all schedules worth having.

A changeover may run before the job's release (the device is prepared while
it waits); it never starts before the machine's `free_at` or its previous
job's end.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from cellctl.planning.calendar import fit
from cellctl.planning.model import PREVIOUS, Assignment, Figures, Objective, Plan, Problem

NO_DUE = 1 << 62  # a job without a due date is never tardy


@dataclass(frozen=True)
class Timing:
    start: list[int]
    end: list[int]
    changeover: list[int]
    machine: list[int]
    changeover_start: list[int]
    clear_start: list[int]  # -1: no clearing
    # Per job, (device index, from, to) it holds besides its machine (`reserves`).
    reserved: list[list[tuple[int, int, int]]] | None = None


class Instance:
    """Index arrays for the hot loops; built once per problem (O(jobs × machines + setups))."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.makespan_only = problem.objective is Objective.MAKESPAN
        self.machine_ids = [m.id for m in problem.machines]
        self.job_ids = [j.id for j in problem.jobs]
        self.n = len(self.job_ids)
        self.m = len(self.machine_ids)
        midx = {mid: i for i, mid in enumerate(self.machine_ids)}
        jidx = {jid: i for i, jid in enumerate(self.job_ids)}
        labels = sorted(
            {m.initial_setup for m in problem.machines} | {j.setup for j in problem.jobs}
        )
        self.setup_labels = labels
        sidx = {s: i for i, s in enumerate(labels)}
        self.setup = [sidx[j.setup] for j in problem.jobs]
        self.release = [j.release for j in problem.jobs]
        self.due = [NO_DUE if j.due is None else j.due for j in problem.jobs]
        self.weight = [j.weight for j in problem.jobs]
        self.init_setup = [sidx[m.initial_setup] for m in problem.machines]
        self.free_at = [m.free_at for m in problem.machines]
        # p[m][j]: processing time, -1 where m cannot run j.
        self.p = [[-1] * self.n for _ in range(self.m)]
        for j, job in enumerate(problem.jobs):
            for mid, d in job.durations.items():
                self.p[midx[mid]][j] = d
        self.capable = [
            sorted((m for m in range(self.m) if self.p[m][j] >= 0), key=lambda m: self.p[m][j])
            for j in range(self.n)
        ]
        # st[m][a][b]: changeover; only the pairs a job can need are ever read.
        ns = len(labels)
        self.st = [[[0] * ns for _ in range(ns)] for _ in range(self.m)]
        for m, mid in enumerate(self.machine_ids):
            for a, row in problem.setup_times.get(mid, {}).items():
                if a not in sidx:
                    continue
                for b, t in row.items():
                    if b in sidx and a != b:
                        self.st[m][sidx[a]][sidx[b]] = t
        self.preds = [tuple(jidx[a] for a in j.after) for j in problem.jobs]
        # Reservations: explicit devices held over the job's run, and `@previous`
        # (the machine of the job's one `after` job, held from when that job leaves
        # it until this one ends: that machine's next job waits for this one).
        self.res = [tuple(midx[d] for d in j.reserves if d != PREVIOUS) for j in problem.jobs]
        self.holds_prev = [PREVIOUS in j.reserves for j in problem.jobs]
        self.holders: list[list[int]] = [[] for _ in range(self.n)]
        for j in range(self.n):
            if self.holds_prev[j]:
                self.holders[self.preds[j][0]].append(j)
        self.succs: list[list[int]] = [[] for _ in range(self.n)]
        for j in range(self.n):
            for q in self.preds[j]:
                self.succs[q].append(j)
        self.reserving = any(self.res) or any(self.holds_prev)
        # The one job holding each job's machine (`@previous`), or -1.
        self.holder_of = [h[0] if len(h) == 1 else -1 for h in self.holders]
        # Holds alone are graph edges (the held machine's next job waits for the
        # holder): `coupled.Pricer` prices them; devices claimed by time are not.
        self.graph_only = not any(self.res) and all(len(h) <= 1 for h in self.holders)
        # `after` and reservations tie machines' timings together.
        self.coupled = any(self.preds) or self.reserving
        self.topo_rank = [0] * self.n
        for r, j in enumerate(topological(self, list(range(self.n)))):
            self.topo_rank[j] = r
        # On a machine where every job it can run is released by its free_at, no job
        # ever waits: a change at one position shifts everything after it by one delta.
        # Operator windows (manual changeovers and bed clearing fit inside one).
        self.windows = problem.shifts
        self.window_ends = [e for _, e in problem.shifts or ()]
        self.clear = [j.clear for j in problem.jobs]
        self.man = [[[False] * ns for _ in range(ns)] for _ in range(self.m)]
        for mid, a, b in problem.manual:
            if mid in midx and a in sidx and b in sidx:
                self.man[midx[mid]][sidx[a]][sidx[b]] = True
        # A timed machine's next free time is not simply its last job's end: its
        # jobs have clearing, or its manual changeovers wait for a shift. Such
        # machines take the slower, general path (`advance`).
        self.timed = [
            any(self.clear[j] for j in range(self.n) if self.p[m][j] >= 0)
            or (self.windows is not None and any(any(row) for row in self.man[m]))
            for m in range(self.m)
        ]
        pins = {mid: [jidx[j] for j in problem.pinned.get(mid, ())] for mid in self.machine_ids}
        self.pinned_seqs = [pins[mid] for mid in self.machine_ids]
        self.pin_len = [len(s) for s in self.pinned_seqs]
        fixed = {j for s in self.pinned_seqs for j in s}
        self.movable = [j for j in range(self.n) if j not in fixed]
        # Per machine, the movable jobs its pinned jobs wait for (through `after`): one
        # of them placed there would come after the pins, so after what waits for it.
        self.pin_blocked: list[set[int]] = []
        for s in self.pinned_seqs:
            seen: set[int] = set()
            todo = [q for p in s for q in self.preds[p]]
            while todo:
                q = todo.pop()
                if q not in seen:
                    seen.add(q)
                    todo.extend(self.preds[q])
            self.pin_blocked.append(seen - fixed)
        self.no_idle = [
            not self.timed[m]
            and all(self.release[j] <= self.free_at[m] for j in range(self.n) if self.p[m][j] >= 0)
            for m in range(self.m)
        ]

    # --- decoding ---------------------------------------------------------

    def advance(self, m: int, ready: int, prev: int, j: int, head: int) -> tuple[int, ...]:
        """Job j after setup `prev` on machine m, free at `ready`, j not before `head`.

        Returns (changeover start, start, end, clearing start or -1, free again at).
        """
        sj = self.setup[j]
        c = self.st[m][prev][sj]
        manual = c > 0 and self.windows is not None and self.man[m][prev][sj]
        cs = fit(self.windows, self.window_ends, ready, c) if manual else ready  # type: ignore[arg-type]
        start = cs + c if cs + c > head else head
        if not manual:
            cs = start - c  # an automatic changeover runs just before its job
        end = start + self.p[m][j]
        cl = self.clear[j]
        if not cl:
            return cs, start, end, -1, end
        clr = end if self.windows is None else fit(self.windows, self.window_ends, end, cl)
        return cs, start, end, clr, clr + cl

    def decode(self, seqs: list[list[int]]) -> Timing | None:
        """Earliest times for these sequences, or None if `after` and the orders deadlock.

        An `after` job that is in no sequence (taken out by a search move) is ignored.
        """
        if self.reserving:
            return self._decode_reserving(seqs)
        n = self.n
        start = [0] * n
        end = [-1] * n
        co = [0] * n
        mach = [-1] * n
        co_start = [0] * n
        clear_start = [-1] * n
        pos = [0] * self.m
        placed = [False] * n
        for seq in seqs:
            for j in seq:
                placed[j] = True
        ready = list(self.free_at)
        prev = list(self.init_setup)
        left = sum(len(s) for s in seqs)
        while left:
            progressed = False
            for m, seq in enumerate(seqs):
                k = pos[m]
                while k < len(seq):
                    j = seq[k]
                    head = self.release[j]
                    blocked = False
                    for q in self.preds[j]:
                        if end[q] < 0:
                            if placed[q]:
                                blocked = True
                                break
                            continue  # out of the plan while the search moves it
                        head = max(head, end[q])
                    if blocked:
                        break
                    cs, s, e, clr, after = self.advance(m, ready[m], prev[m], j, head)
                    start[j], end[j], mach[j] = s, e, m
                    co[j] = self.st[m][prev[m]][self.setup[j]]
                    co_start[j], clear_start[j] = cs, clr
                    ready[m], prev[m] = after, self.setup[j]
                    k += 1
                    left -= 1
                    progressed = True
                pos[m] = k
            if not progressed:
                return None
        return Timing(start, end, co, mach, co_start, clear_start)

    def _decode_reserving(self, seqs: list[list[int]]) -> Timing | None:
        """`decode` with reservations: jobs are timed in order of their start.

        Holding a device is claiming it from when it is free, so the order in
        which jobs claim a shared device decides the times: the job that can
        start first claims first (ties: the lower machine index). A device
        held by `@previous` runs nothing else until its holder has been timed.
        """
        n, m_count = self.n, self.m
        start = [0] * n
        end = [-1] * n
        co = [0] * n
        mach = [-1] * n
        co_start = [0] * n
        clear_start = [-1] * n
        free_after = [0] * n  # when the job's machine is free again (after clearing)
        reserved: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
        placed = [False] * n
        for seq in seqs:
            for j in seq:
                placed[j] = True
        pos = [0] * m_count
        ready = list(self.free_at)
        prev = list(self.init_setup)
        last = [-1] * m_count  # the last job timed on each machine

        def held(d: int, by: int) -> bool:
            # d's last job waits for a holder (`@previous`) not yet timed.
            q = last[d]
            return q >= 0 and any(u != by and placed[u] and end[u] < 0 for u in self.holders[q])

        left = sum(len(s) for s in seqs)
        while left:
            best: tuple[int, int, tuple[int, ...]] | None = None
            for m, seq in enumerate(seqs):
                k = pos[m]
                if k >= len(seq):
                    continue
                j = seq[k]
                if held(m, j):
                    continue
                head = self.release[j]
                blocked = False
                for q in self.preds[j]:
                    if end[q] < 0:
                        if placed[q]:
                            blocked = True
                            break
                        continue
                    head = max(head, end[q])
                for d in self.res[j]:
                    if held(d, j):
                        blocked = True
                        break
                    head = max(head, ready[d])
                if blocked:
                    continue
                got = self.advance(m, ready[m], prev[m], j, head)
                if best is None or (got[1], m) < (best[2][1], best[0]):
                    best = (m, j, got)
            if best is None:
                return None
            m, j, (cs, s, e, clr, after) = best
            start[j], end[j], mach[j] = s, e, m
            co[j] = self.st[m][prev[m]][self.setup[j]]
            co_start[j], clear_start[j] = cs, clr
            ready[m], prev[m], last[m] = after, self.setup[j], j
            free_after[j] = after
            for d in self.res[j]:
                reserved[j].append((d, s, e))
                ready[d] = max(ready[d], e)
            if self.holds_prev[j]:
                q = self.preds[j][0]
                if end[q] >= 0 and mach[q] != m:
                    d = mach[q]
                    reserved[j].append((d, free_after[q], max(free_after[q], e)))
                    ready[d] = max(ready[d], e)
            pos[m] += 1
            left -= 1
        return Timing(start, end, co, mach, co_start, clear_start, reserved)

    def figures_of(self, timing: Timing) -> Figures:
        wt = 0
        for j in range(self.n):
            late = timing.end[j] - self.due[j]
            if late > 0:
                wt += self.weight[j] * late
        return Figures(
            objective=self.problem.objective,
            weighted_tardiness=wt,
            changeover=sum(timing.changeover),
            makespan=max(timing.end, default=0),
        )

    def key_of(self, seqs: list[list[int]]) -> tuple[int, ...] | None:
        """The search key of a solution: the objective's key, then a tie-break.

        The tie-break (the sum of the machines' last ends) never outranks the
        objective; it only lets the search prefer, among equal plans, one with
        more room on the other machines.
        """
        timing = self.decode(seqs)
        if timing is None:
            return None
        f = self.figures_of(timing)
        last = [self.free_at[m] if not s else timing.end[s[-1]] for m, s in enumerate(seqs)]
        return (*f.key, sum(last))

    def to_plan(
        self, seqs: list[list[int]], method: str, iterations: int = 0, elapsed_s: float = 0.0
    ) -> Plan:
        timing = self.decode(seqs)
        if timing is None:
            raise AssertionError("a planner produced deadlocked sequences")
        assignments = []
        for m, seq in enumerate(seqs):
            prev = self.init_setup[m]
            for j in seq:
                assignments.append(
                    Assignment(
                        job=self.job_ids[j],
                        machine=self.machine_ids[m],
                        start=timing.start[j],
                        end=timing.end[j],
                        changeover=timing.changeover[j],
                        setup_before=self.setup_labels[prev],
                        changeover_start=timing.changeover_start[j],
                        clear_start=None if timing.clear_start[j] < 0 else timing.clear_start[j],
                        reserved=tuple(
                            (self.machine_ids[d], a, b) for d, a, b in timing.reserved[j]
                        )
                        if timing.reserved
                        else (),
                    )
                )
                prev = self.setup[j]
        assignments.sort(key=lambda a: (a.start, a.machine))
        return Plan(
            sequences={
                self.machine_ids[m]: tuple(self.job_ids[j] for j in seq)
                for m, seq in enumerate(seqs)
            },
            assignments=tuple(assignments),
            figures=self.figures_of(timing),
            method=method,
            iterations=iterations,
            elapsed_s=elapsed_s,
        )


def topological(inst: Instance, order: list[int]) -> list[int]:
    """`order` made consistent with `after`: a job moves back only as far as its predecessors."""
    if not inst.coupled:
        return order
    rank = {j: i for i, j in enumerate(order)}
    indeg = [len(inst.preds[j]) for j in range(inst.n)]
    succs: list[list[int]] = [[] for _ in range(inst.n)]
    for j in range(inst.n):
        for q in inst.preds[j]:
            succs[q].append(j)
    # A job holding its predecessor's machine (`@previous`) comes right after it,
    # so that a list schedule never gives that machine other work first.
    first = [-1 if inst.holds_prev[j] else 0 for j in range(inst.n)]
    heap = [(first[j], rank[j], j) for j in range(inst.n) if indeg[j] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, _, j = heapq.heappop(heap)
        out.append(j)
        for s in succs[j]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (first[s], rank[s], s))
    return out
