"""Incremental pricing for problems with `after`: only what an insertion moves is re-timed.

The decoded plan is a graph: each job waits for its machine's previous job
and for its `after` jobs. Inserting job j at a place adds j and its edges;
only j and what lies downstream of it can change. Those are re-timed in the
order of the current plan's (start, end, decode order), which every edge of
the new graph except j's own respects (an edge never goes back in time), so
each job is re-timed once, after everything it waits for. A job whose end
and free time come out as before stops the walk there: nothing downstream
of it moves (through it).

Only the job after j on its machine can come out earlier (its changeover
now follows j, and the setup times need not obey the triangle inequality,
nor a manual changeover wait for the same shift); once it does not, every
other re-timed job only gets later, so the tardiness summed so far (the
makespan so far) bounds the result from below, and a place that cannot beat
the best one found is dropped mid-walk. Places are tried from the end of a
sequence back, so the cheap ones set the bound first.

An insertion can close a cycle (j after something that now waits for j):
the decode would deadlock. This is checked only for a place that would win.
A path out of j's successors back to its predecessors must run forward in
time, so it is searched only when a successor does not already lie after
every predecessor, and only among jobs no later than the latest one.

An unload (`@previous`) is an edge of the same graph: the held machine's
next job waits for the holder. Moving the held job itself changes which job
waits, from a job that may lie downstream of it: that place is priced by a
full decode. Problems where a job claims a device over its run (`reserves`
naming a machine) are priced by full decodes throughout: who claims a
shared device first is decided in time order, not by a fixed graph.
"""

from __future__ import annotations

import heapq

from cellctl.planning.instance import Instance

Key = tuple[int, ...]


class Pricer:
    """The current solution's decoded times, and the price of inserting a removed job."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        n = inst.n
        self.succs = inst.succs
        self.seqs: list[list[int]] = []
        self.placed = [False] * n
        self.is_last = [False] * n
        self.where = [-1] * n
        self.pos = [-1] * n
        self.start = [0] * n
        self.end = [0] * n
        self.co = [0] * n
        self.free = [0] * n  # when the job's machine is free again (after any clearing)
        self.order = [0] * n  # decode order: a topological order of the plan's graph
        self.by_end: list[int] = []  # placed jobs, latest end first
        self.wt = self.cs = self.last = self.mk = 0
        self.key: Key | None = None

    def load(self, seqs: list[list[int]]) -> Key | None:
        """Decode `seqs` (as `Instance.decode`, keeping the decode order); their key."""
        inst = self.inst
        self.seqs = seqs
        placed = [False] * inst.n
        for m, sq in enumerate(seqs):
            for k, j in enumerate(sq):
                self.pos[j] = k
                self.where[j] = m
                placed[j] = True
        self.placed = placed
        ready = list(inst.free_at)
        prev = list(inst.init_setup)
        at = [0] * inst.m
        done = [False] * inst.n
        left = sum(len(s) for s in seqs)
        stamp = 0
        start, end, co, free, order = self.start, self.end, self.co, self.free, self.order
        holder_of = inst.holder_of
        while left:
            progressed = False
            for m, seq in enumerate(seqs):
                k = at[m]
                while k < len(seq):
                    j = seq[k]
                    head = inst.release[j]
                    blocked = False
                    for q in inst.preds[j]:
                        if placed[q]:
                            if not done[q]:
                                blocked = True
                                break
                            if end[q] > head:
                                head = end[q]
                    r = ready[m]
                    if k:  # the machine waits for its last job's holder (`@previous`)
                        h = holder_of[seq[k - 1]]
                        if h >= 0 and h != j and placed[h]:
                            if not done[h]:
                                blocked = True
                            elif end[h] > r:
                                r = end[h]
                    if blocked:
                        break
                    _, t0, t1, _, after = inst.advance(m, r, prev[m], j, head)
                    start[j], end[j], free[j] = t0, t1, after
                    co[j] = inst.st[m][prev[m]][inst.setup[j]]
                    order[j] = stamp
                    stamp += 1
                    done[j] = True
                    ready[m], prev[m] = after, inst.setup[j]
                    k += 1
                    left -= 1
                    progressed = True
                at[m] = k
            if not progressed:
                self.key = None
                return None
        jobs = [j for s in seqs for j in s]
        self.is_last = [False] * inst.n
        for sq in seqs:
            if sq:
                self.is_last[sq[-1]] = True
        self.by_end = sorted(jobs, key=lambda j: -end[j])
        wt = 0
        for j in jobs:
            late = end[j] - inst.due[j]
            if late > 0:
                wt += inst.weight[j] * late
        self.wt = wt
        self.cs = sum(co[j] for j in jobs)
        self.last = sum(end[s[-1]] if s else inst.free_at[m] for m, s in enumerate(seqs))
        mk = end[self.by_end[0]] if jobs else 0
        self.mk = mk
        self.key = self._key(wt, self.cs, mk, self.last)
        return self.key

    def _key(self, wt: int, cs: int, mk: int, last: int) -> Key:
        if self.inst.makespan_only:
            return (mk, last)
        return (wt, cs, mk, last)

    def _rank(self, j: int) -> tuple[int, int, int]:
        return (self.start[j], self.end[j], self.order[j])

    def _cycle(self, sources: list[int], targets: list[int]) -> bool:
        """Whether a path of the current plan leads from a source to a target."""
        if not targets or not sources:
            return False
        top = max(self._rank(t) for t in targets)
        todo = [s for s in sources if self._rank(s) <= top]
        if not todo:
            return False
        goal = set(targets)
        seen = set(todo)
        while todo:
            v = todo.pop()
            if v in goal:
                return True
            nxt = list(self.succs[v])
            seq = self.seqs[self.where[v]]
            if self.pos[v] + 1 < len(seq):
                nxt.append(seq[self.pos[v] + 1])
            w = self._held_next(v)
            if w >= 0:
                nxt.append(w)
            for w in nxt:
                if self.placed[w] and w not in seen and self._rank(w) <= top:
                    seen.add(w)
                    todo.append(w)
        return False

    def _held_next(self, h: int) -> int:
        """The job that waits for holder h: the next one on the machine h holds, or -1."""
        if not self.inst.holds_prev[h]:
            return -1
        q = self.inst.preds[h][0]
        if not self.placed[q]:
            return -1
        seq = self.seqs[self.where[q]]
        k = self.pos[q] + 1
        return seq[k] if k < len(seq) and seq[k] != h else -1

    def _full(self, j: int, m: int, pos: int, limit: Key | None) -> Key | None:
        self.seqs[m].insert(pos, j)
        key = self.inst.key_of(self.seqs)
        del self.seqs[m][pos]
        return None if key is None or (limit is not None and key >= limit) else key

    def price(self, j: int, m: int, pos: int, limit: Key | None = None) -> Key | None:
        """The key with removed job j inserted on machine m at pos; None if it deadlocks,
        or if it cannot be better than `limit` (then the walk stops early).

        `load` must have been given the current sequences, without j.
        """
        inst = self.inst
        holder_of = inst.holder_of
        placed = self.placed
        h_j = holder_of[j]
        if self.key is None:  # the sequences deadlock already (not in a search)
            return self._full(j, m, pos, limit)
        if h_j >= 0 and placed[h_j]:
            # j's holder now holds j's machine: a new edge from a job downstream of j
            # to j's next job, which need not respect the plan's order. Decode it.
            return self._full(j, m, pos, limit)
        seq = self.seqs[m]
        start, end, free, order = self.start, self.end, self.free, self.order
        prev_job = seq[pos - 1] if pos else -1
        next_job = seq[pos] if pos < len(seq) else -1
        preds = [q for q in inst.preds[j] if placed[q]]
        succs = [s for s in self.succs[j] if placed[s]]
        sources = succs + ([next_job] if next_job >= 0 else [])
        held = -1  # the job that, j being a holder, now waits for j
        if inst.holds_prev[j] and preds:
            q = preds[0]
            sq = self.seqs[self.where[q]]
            k = self.pos[q] + 1
            if k < len(sq) and not (self.where[q] == m and pos == k):
                held = sq[k]
                sources.append(held)
        head = inst.release[j]
        for q in preds:
            if end[q] > head:
                head = end[q]
        ready = free[prev_job] if prev_job >= 0 else inst.free_at[m]
        wait = holder_of[prev_job] if prev_job >= 0 else -1
        if wait >= 0 and wait != j and placed[wait]:
            if end[wait] > ready:
                ready = end[wait]
        else:
            wait = -1
        before = inst.setup[prev_job] if prev_job >= 0 else inst.init_setup[m]
        _, _, e_j, _, f_j = inst.advance(m, ready, before, j, head)
        co_j = inst.st[m][before][inst.setup[j]]
        wt = self.wt + (inst.weight[j] * (e_j - inst.due[j]) if e_j > inst.due[j] else 0)
        cs = self.cs + co_j
        makespan_only = inst.makespan_only
        # Only next_job can come out earlier (its changeover now follows j); once it
        # does not, every other job only gets later, so the partial tardiness (or
        # makespan) is a lower bound, and a place that cannot win is dropped.
        monotone = next_job < 0
        lo_mk = self.mk if self.mk > e_j else e_j
        new_end: dict[int, int] = {j: e_j}
        new_free: dict[int, int] = {j: f_j}
        heap: list[tuple[int, int, int, int]] = []
        queued: set[int] = set()
        for v in sources:
            if v not in queued:
                queued.add(v)
                heapq.heappush(heap, (start[v], end[v], order[v], v))
        where = self.where
        # The sum of the machines' last ends, from below: exact for j at the end of
        # m, then each re-timed last job's increase.
        is_last = self.is_last
        lo_last = self.last
        if pos == len(seq):
            lo_last += e_j - (end[seq[-1]] if seq else inst.free_at[m])
        while heap:
            if monotone and limit is not None:
                lb = (lo_mk, lo_last) if makespan_only else (wt, cs, lo_mk, lo_last)
                if lb >= limit:
                    return None
            v = heapq.heappop(heap)[3]
            mv = where[v]
            sv = self.seqs[mv]
            k = self.pos[v]
            if v == next_job:
                u = j
            else:
                u = sv[k - 1] if k else -1
            if u >= 0:
                r = new_free.get(u, free[u])
                su = inst.setup[u]
                h = holder_of[u]
                if h >= 0 and h != v and (h == j or placed[h]):
                    eh = new_end.get(h, end[h])
                    if eh > r:
                        r = eh
            else:
                r, su = inst.free_at[mv], inst.init_setup[mv]
            h = inst.release[v]
            for q in inst.preds[v]:
                if q == j or placed[q]:
                    eq = new_end.get(q, end[q])
                    if eq > h:
                        h = eq
            _, _, e, _, f = inst.advance(mv, r, su, v, h)
            if v == next_job:
                cs += inst.st[mv][su][inst.setup[v]] - self.co[v]
                monotone = e >= end[v] and f >= free[v]
            if e != end[v]:
                d = inst.due[v]
                w = inst.weight[v]
                wt += w * ((e - d if e > d else 0) - (end[v] - d if end[v] > d else 0))
                new_end[v] = e
                if e > lo_mk:
                    lo_mk = e
                if is_last[v]:
                    lo_last += e - end[v]
                for s in self.succs[v]:
                    if placed[s] and s not in queued:
                        queued.add(s)
                        heapq.heappush(heap, (start[s], end[s], order[s], s))
                w = self._held_next(v)
                if w >= 0 and w not in queued:
                    queued.add(w)
                    heapq.heappush(heap, (start[w], end[w], order[w], w))
            if f != free[v]:
                new_free[v] = f
                if k + 1 < len(sv):
                    s = sv[k + 1]
                    if s not in queued:
                        queued.add(s)
                        heapq.heappush(heap, (start[s], end[s], order[s], s))
        # Makespan: the latest of the re-timed ends and the latest unchanged one.
        mk = e_j
        for e in new_end.values():
            if e > mk:
                mk = e
        for v in self.by_end:
            if v not in new_end:
                if end[v] > mk:
                    mk = end[v]
                break
        # The sum of the machines' last ends: only re-timed last jobs change it.
        old = end[seq[-1]] if seq else inst.free_at[m]
        now = e_j if pos == len(seq) else new_end.get(seq[-1], end[seq[-1]])
        last = self.last + now - old
        for v, e in new_end.items():
            if v != j and is_last[v] and where[v] != m:
                last += e - end[v]
        key = self._key(wt, cs, mk, last)
        if limit is not None and key >= limit:
            return None
        # Checked last, and only for a place that would win: most places are dropped
        # above, and the search for a path costs more than the walk.
        targets = preds + ([prev_job] if prev_job >= 0 else []) + ([wait] if wait >= 0 else [])
        if self._cycle(sources, targets):
            return None
        return key
