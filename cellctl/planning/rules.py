"""The simple rules the planner is compared with, and the instant construction.

- `fifo`: what print-farm managers do. Whenever a machine becomes free it
  takes the oldest waiting job it can run (oldest = earliest release, then
  file order).
- `group`: today's `BaselineDispatcher`: the same, but a job needing the
  setup already loaded goes first.
- `greedy`: each job in file order at the best place (any capable machine,
  any position) given the jobs placed before it.
- `instant`: jobs in order of urgency (earliest due date for weighted
  tardiness, longest first for makespan), each inserted at the end of a
  machine or right after its latest job with the same setup, whichever is
  best; then
  insertion local search while a fixed amount of work allows. Deterministic,
  and cheap enough to call on every event (see docs/scheduling.md).

Every rule produces sequences; times come from the one decoder.
"""

from __future__ import annotations

from cellctl.planning.instance import Instance, topological
from cellctl.planning.solution import Solution


def arrival_order(inst: Instance) -> list[int]:
    """The movable jobs, oldest first (pinned ones are already placed)."""
    order = topological(inst, sorted(range(inst.n), key=lambda j: (inst.release[j], j)))
    movable = set(inst.movable)
    return [j for j in order if j in movable]


def _after_pins(inst: Instance) -> tuple[list[list[int]], list[int], list[int], list[int]]:
    """(sequences, free at, loaded setup, job ends) once the pinned jobs have run."""
    seqs = [list(s) for s in inst.pinned_seqs]
    ready, prev = list(inst.free_at), list(inst.init_setup)
    end = [-1] * inst.n
    timing = inst.decode(seqs)
    assert timing is not None, "pinned sequences that deadlock passed validation"
    for m, s in enumerate(seqs):
        for j in s:
            end[j] = timing.end[j]
            c = timing.clear_start[j]
            ready[m] = c + inst.clear[j] if c >= 0 else timing.end[j]
            prev[m] = inst.setup[j]
    return seqs, ready, prev, end


def _pinned_unloads(
    inst: Instance, seqs: list[list[int]], ready: list[int], prev: list[int], end: list[int]
) -> set[int]:
    """The unloads (`@previous`) of each machine's last pinned job, placed first: the
    machine is held until they end. Returns the jobs placed."""
    taken = {j for s in seqs for j in s}
    placed: set[int] = set()
    waits = _pin_waits(inst)
    for s in inst.pinned_seqs:
        if s and s[-1] not in waits:  # (else the unload waits for what the job waits for)
            placed.update(_unloads(inst, s[-1], taken, end, ready, prev, seqs))
    return placed


def _unloads(
    inst: Instance,
    q: int,
    taken: set[int],
    end: list[int],
    ready: list[int],
    prev: list[int],
    seqs: list[list[int]],
) -> list[int]:
    """q's unload placed at once, then that unload's own, and so on; the jobs placed."""
    out: list[int] = []
    while True:
        nxt = [u for u in inst.holders[q] if u not in taken]
        if not nxt:
            return out
        q = nxt[0]
        _unload(inst, q, end, ready, prev, seqs)
        taken.add(q)
        out.append(q)


def dispatch(inst: Instance, prefer_setup: bool) -> list[list[int]]:
    """Event-driven list scheduling: the machine free first picks from the waiting jobs."""
    seqs, ready, prev, end = _after_pins(inst)
    first = _pinned_unloads(inst, seqs, ready, prev, end)
    waiting = [j for j in arrival_order(inst) if j not in first]
    taken = {j for s in seqs for j in s}
    # A pinned job is done only once the movable jobs it waits for are: its time from
    # the pins alone (`_after_pins`) took them as done.
    pin_wait = _pin_waits(inst)
    active = {m for m in range(inst.m) if any(inst.p[m][j] >= 0 for j in waiting)}
    parked: set[int] = set()
    pending = set(waiting)

    def held(d: int) -> list[int]:
        # Holders (`@previous`) of d's last job still waiting: d takes nothing else.
        return [u for u in inst.holders[seqs[d][-1]] if u in pending] if seqs[d] else []

    while waiting:
        if not active:
            raise AssertionError("jobs left that no machine can run")
        m = min(active, key=lambda mm: (mm in parked, ready[mm], mm))
        now = ready[m]
        pm = inst.p[m]
        pick = -1
        capable = False
        nxt = None
        only = held(m)
        for j in waiting:
            if pm[j] < 0 or not _may_run(inst, m, j):
                continue
            capable = True
            if only and j not in only:
                continue
            head = inst.release[j]
            done = True
            for q in inst.preds[j]:
                if end[q] < 0 or any(a in pending for a in pin_wait.get(q, ())):
                    done = False
                    break
                head = max(head, end[q], *(end[a] for a in pin_wait.get(q, ())))
            for d in inst.res[j]:
                if any(u != j for u in held(d)):
                    done = False
                    break
                head = max(head, ready[d])
            if not done:
                continue
            if head <= now:
                if pick < 0:
                    pick = j
                    if not prefer_setup:
                        break
                if inst.setup[j] == prev[m]:
                    pick = j
                    break
            elif nxt is None or head < nxt:
                nxt = head
        if pick >= 0:
            waiting.remove(pick)
            pending.discard(pick)
            taken.add(pick)
            seqs[m].append(pick)
            c = inst.st[m][prev[m]][inst.setup[pick]]
            end[pick] = now + c + pm[pick]
            ready[m], prev[m] = end[pick], inst.setup[pick]
            _hold(inst, pick, end, ready, seqs)
            # Its unload (`@previous`) goes at once, to the machine that can start it
            # first: two machines each waiting for an unload only the other can run
            # would stall, and the machine is held until the unload ends anyway.
            for u in _unloads(inst, pick, taken, end, ready, prev, seqs):
                waiting.remove(u)
                pending.discard(u)
            parked.clear()
            continue
        if not capable:
            active.discard(m)
            continue
        # Nothing for m yet: wake at the next release, or when another machine moves on.
        later = [ready[o] for o in active if o != m and ready[o] > now]
        if nxt is not None:
            later.append(nxt)
        if later:
            ready[m] = min(later)
        elif m in parked:
            raise AssertionError("dispatch stalled")  # unreachable on an acyclic problem
        else:
            parked.add(m)
    return seqs


def _hold(inst: Instance, j: int, end: list[int], ready: list[int], seqs: list[list[int]]) -> None:
    """The devices j reserves are busy until it ends (in a list schedule's own times)."""
    for d in inst.res[j]:
        ready[d] = max(ready[d], end[j])
    if inst.holds_prev[j]:
        q = inst.preds[j][0]
        for d, s in enumerate(seqs):
            if q in s:
                ready[d] = max(ready[d], end[j])


def _pin_waits(inst: Instance) -> dict[int, set[int]]:
    """Pinned job → the movable jobs it waits for through `after` (if any)."""
    fixed = {j for s in inst.pinned_seqs for j in s}
    out: dict[int, set[int]] = {}
    for p in fixed:
        seen: set[int] = set()
        todo = list(inst.preds[p])
        while todo:
            q = todo.pop()
            if q not in seen:
                seen.add(q)
                todo.extend(inst.preds[q])
        if seen - fixed:
            out[p] = seen - fixed
    return out


def _may_run(inst: Instance, m: int, j: int) -> bool:
    """Whether a list schedule may put j on m: not if m's pinned jobs wait for j."""
    return j not in inst.pin_blocked[m]


def _unload(
    inst: Instance,
    u: int,
    end: list[int],
    ready: list[int],
    prev: list[int],
    seqs: list[list[int]],
) -> None:
    head = max(inst.release[u], end[inst.preds[u][0]], *(ready[d] for d in inst.res[u]))
    best: tuple[int, int] | None = None
    for mu in [m for m in inst.capable[u] if _may_run(inst, m, u)] or inst.capable[u]:
        e = max(ready[mu] + inst.st[mu][prev[mu]][inst.setup[u]], head) + inst.p[mu][u]
        if best is None or e < best[0]:
            best = (e, mu)
    assert best is not None
    e, mu = best
    seqs[mu].append(u)
    end[u], ready[mu], prev[mu] = e, e, inst.setup[u]
    _hold(inst, u, end, ready, seqs)


def _decodable(inst: Instance, seqs: list[list[int]], order: list[int]) -> list[list[int]]:
    """`seqs`, or, if they deadlock, the same jobs inserted one by one in `order` where
    no deadlock follows. A list schedule's own times can disagree with the decoder's
    when a job claims a device (`reserves`) that an unload (`@previous`) holds."""
    if not inst.reserving or inst.decode(seqs) is not None:
        return seqs
    return insert_all(inst, order, grouped=False).seqs


def fifo(inst: Instance) -> list[list[int]]:
    return _decodable(inst, dispatch(inst, prefer_setup=False), arrival_order(inst))


def group(inst: Instance) -> list[list[int]]:
    return _decodable(inst, dispatch(inst, prefer_setup=True), arrival_order(inst))


def insert_all(inst: Instance, order: list[int], grouped: bool) -> Solution:
    sol = Solution(inst, inst.pinned_seqs)
    for j in order:
        found = sol.best_insertion(j, grouped)
        assert found is not None, "a job without a capable machine passed validation"
        key, m, pos = found
        sol.insert(j, m, pos, key)
    return sol


def greedy(inst: Instance) -> list[list[int]]:
    return insert_all(inst, arrival_order(inst), grouped=False).seqs


def urgency_order(inst: Instance) -> list[int]:
    if inst.makespan_only:
        # Longest first (by the fastest machine), the classic order for insertion.
        key = sorted(range(inst.n), key=lambda j: (-inst.p[inst.capable[j][0]][j], j))
    else:
        key = sorted(
            range(inst.n),
            key=lambda j: (inst.due[j], -inst.weight[j], inst.release[j], j),
        )
    movable = set(inst.movable)
    return [j for j in topological(inst, key) if j in movable]


def append_coupled(inst: Instance, order: list[int]) -> list[list[int]]:
    """List scheduling in a topological order: each job to the machine that ends it first."""
    seqs, ready, prev, end = _after_pins(inst)
    first = _pinned_unloads(inst, seqs, ready, prev, end)
    # A machine whose last pinned job's unload is still to place takes nothing else.
    hold = [-1] * inst.m
    for m, s in enumerate(inst.pinned_seqs):
        if s:
            hold[m] = next((u for u in inst.holders[s[-1]] if u in set(order) - first), -1)
    for j in order:
        if j in first:
            continue
        head = inst.release[j]
        for q in inst.preds[j]:
            head = max(head, end[q])
        for d in inst.res[j]:
            head = max(head, ready[d])
        best: tuple[int, int, int] | None = None
        where = [m for m in inst.capable[j] if _may_run(inst, m, j) and hold[m] in (-1, j)]
        for m in where or inst.capable[j]:  # (none: the decoder will say it deadlocks)
            c = inst.st[m][prev[m]][inst.setup[j]]
            e = max(ready[m] + c, head) + inst.p[m][j]
            if best is None or (e, c) < best[:2]:
                best = (e, c, m)
        assert best is not None
        e, _, m = best
        seqs[m].append(j)
        end[j], ready[m], prev[m] = e, e, inst.setup[j]
        _hold(inst, j, end, ready, seqs)
        hold = [-1 if h == j else h for h in hold]
    return seqs


# The instant method's local search stops after this many priced positions:
# a bound on work, not on time, so that it is deterministic.
INSTANT_WORK = 2_000


def instant(inst: Instance) -> Solution:
    order = urgency_order(inst)
    if inst.coupled:
        return Solution(inst, _decodable(inst, append_coupled(inst, order), order))
    sol = insert_all(inst, order, grouped=True)
    from cellctl.planning.search import local_search

    local_search(sol, order, work_limit=INSTANT_WORK)
    return sol
