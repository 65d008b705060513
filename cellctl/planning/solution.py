"""A solution under search: sequences per machine, with what makes moves cheap.

The neighbourhood is insertion: take a job out, put it back at the best
position of any machine that can run it. On an uncoupled problem (no
`after`) machines are independent, so a move is priced on the one or two
machines it touches, from per-machine prefix arrays (completion, weighted
tardiness and changeover up to each position):
- a machine where no job waits for its release (`Instance.no_idle`) shifts
  everything after the insertion point by one delta: O(1) per position for
  the makespan, one pass over the suffix's lateness for tardiness;
- elsewhere the suffix is walked until a job ends where it used to, after
  which nothing changes.
A coupled problem (with `after`, and unloads: `@previous`) is priced by
re-timing only what the insertion moves (`coupled.Pricer`); one where a job
claims a device over its run by decoding the whole solution.
"""

from __future__ import annotations

from bisect import bisect_left

from cellctl.planning.coupled import Pricer
from cellctl.planning.instance import NO_DUE, Instance

Key = tuple[int, ...]
NO_LIMIT = 1 << 62


class Solution:
    # Price coupled moves with `Pricer` (False: full decodes, the reference the
    # benchmark and the property test compare it with).
    incremental = True

    def __init__(self, inst: Instance, seqs: list[list[int]]) -> None:
        self.inst = inst
        self._pricer: Pricer | None = None  # loaded with the current seqs, or None
        self.seqs = [list(s) for s in seqs]
        self.where = [-1] * inst.n
        for m, s in enumerate(self.seqs):
            for j in s:
                self.where[j] = m
        self.cost: list[tuple[int, int, int]] = [(0, 0, 0)] * inst.m
        self.C: list[list[int]] = [[] for _ in range(inst.m)]
        self.W: list[list[int]] = [[] for _ in range(inst.m)]
        self.S: list[list[int]] = [[] for _ in range(inst.m)]
        self.lat: list[list[int]] = [[] for _ in range(inst.m)]
        self.R: list[list[int]] = [[] for _ in range(inst.m)]  # free again after each job
        # For tardiness under a shift delta ≥ 0: prefix sums over the jobs already
        # late (their tardiness grows by w·delta; a suffix's is total − prefix), and
        # the on-time jobs by position.
        self.PW: list[list[int]] = [[0] for _ in range(inst.m)]
        self.PWL: list[list[int]] = [[0] for _ in range(inst.m)]
        self.early: list[list[int]] = [[] for _ in range(inst.m)]
        self.SS: list[list[int]] = [[] for _ in range(inst.m)]  # setups in sequence order
        self._key: Key | None = None
        if not inst.coupled:
            for m in range(inst.m):
                self._refresh(m)

    def copy(self) -> Solution:
        other = Solution.__new__(Solution)
        other.inst = self.inst
        other.seqs = [list(s) for s in self.seqs]
        other.where = list(self.where)
        other.cost = list(self.cost)
        other.C = [list(c) for c in self.C]
        other.W = [list(c) for c in self.W]
        other.S = [list(c) for c in self.S]
        other.lat = [list(c) for c in self.lat]
        other.R = [other.C[m] if c is self.C[m] else list(c) for m, c in enumerate(self.R)]
        other.PW = [list(c) for c in self.PW]
        other.PWL = [list(c) for c in self.PWL]
        other.early = [list(c) for c in self.early]
        other.SS = [list(c) for c in self.SS]
        other._key = self._key
        other._pricer = None
        other.incremental = self.incremental
        return other

    # --- bookkeeping ------------------------------------------------------

    def _refresh(self, m: int, start: int = 0) -> None:
        """Machine m's prefix arrays from position `start` on (those before it hold)."""
        inst = self.inst
        seq = self.seqs[m]
        timed = inst.timed[m]
        pm, stm, setup, rel, due, w = (
            inst.p[m],
            inst.st[m],
            inst.setup,
            inst.release,
            inst.due,
            inst.weight,
        )
        C, W, S, lat, R = self.C[m], self.W[m], self.S[m], self.lat[m], self.R[m]
        PW, PWL, early = self.PW[m], self.PWL[m], self.early[m]
        start = min(start, len(C))
        del C[start:], W[start:], S[start:], lat[start:], PW[start + 1 :], PWL[start + 1 :]
        del early[bisect_left(early, start) :]
        SS = self.SS[m]
        del SS[start:]
        if timed:
            del R[start:]
        if start:
            t = R[start - 1] if timed else C[start - 1]
            prev, wt, cs = setup[seq[start - 1]], W[start - 1], S[start - 1]
        else:
            t, prev, wt, cs = inst.free_at[m], inst.init_setup[m], 0, 0
        pw, pwl = PW[start], PWL[start]
        end = C[start - 1] if start else t
        for k in range(start, len(seq)):
            j = seq[k]
            sj = setup[j]
            if timed:
                _, _, end, _, t = inst.advance(m, t, prev, j, rel[j])
                c = stm[prev][sj]
                R.append(t)
            else:
                c = stm[prev][sj]
                t += c
                if t < rel[j]:
                    t = rel[j]
                t += pm[j]
                end = t
            x = end - due[j]
            if x > 0:
                wt += w[j] * x
            if x >= 0:
                pw += w[j]
                pwl += w[j] * x
            elif due[j] != NO_DUE:
                early.append(k)
            cs += c
            prev = sj
            SS.append(sj)
            C.append(end)
            W.append(wt)
            S.append(cs)
            lat.append(x)
            PW.append(pw)
            PWL.append(pwl)
        if not timed:
            self.R[m] = C
        self.cost[m] = (wt, cs, C[-1] if C else inst.free_at[m])

    def key(self) -> Key:
        if self._key is None:
            inst = self.inst
            if inst.coupled:
                k = self._loaded().key if self._uses_pricer() else inst.key_of(self.seqs)
                assert k is not None, "a coupled solution under search deadlocked"
                self._key = k
            else:
                last = [c[2] for c in self.cost]
                if inst.makespan_only:
                    self._key = (self._makespan(), sum(last))
                else:
                    self._key = (
                        sum(c[0] for c in self.cost),
                        sum(c[1] for c in self.cost),
                        self._makespan(),
                        sum(last),
                    )
        return self._key

    def _makespan(self) -> int:
        # Makespan counts job ends only: an idle machine's free_at is not work.
        return max((self.C[m][-1] for m in range(self.inst.m) if self.C[m]), default=0)

    def _uses_pricer(self) -> bool:
        return self.incremental and self.inst.graph_only

    def _loaded(self) -> Pricer:
        if self._pricer is None:
            self._pricer = Pricer(self.inst)
            self._pricer.load(self.seqs)
        return self._pricer

    def remove(self, j: int) -> None:
        m = self.where[j]
        pos = self.seqs[m].index(j)
        del self.seqs[m][pos]
        self.where[j] = -1
        self._key = None
        self._pricer = None
        if not self.inst.coupled:
            self._refresh(m, pos)

    def insert(self, j: int, m: int, pos: int, key: Key | None = None) -> None:
        """Put j back; `key`, when the caller priced this very move, spares a decode."""
        self.seqs[m].insert(pos, j)
        self.where[j] = m
        self._key = None
        self._pricer = None
        if not self.inst.coupled:
            self._refresh(m, pos)
        elif key is not None and self._uses_pricer():
            self._key = key

    # --- pricing insertions -------------------------------------------------

    def best_insertion(self, j: int, grouped: bool = False) -> tuple[Key, int, int] | None:
        """(key after inserting j, machine, position): the best place for removed job j.

        `grouped` tries only the end of each sequence and the place right after
        its latest job with the same setup (for the instant construction: a
        handful of places per machine, so it scales to thousands of steps).
        """
        if self.inst.coupled:
            return self._best_coupled(j, grouped)
        inst = self.inst
        cost = self.cost
        tw = sum(c[0] for c in cost)
        tc = sum(c[1] for c in cost)
        tl = sum(c[2] for c in cost)
        # Makespan over the other machines: the top two job-ending machines suffice.
        ends = sorted(((self.C[m][-1], m) for m in range(inst.m) if self.C[m]), reverse=True)
        best: tuple[Key, int, int] | None = None
        for m in inst.capable[j]:
            others = next((e for e, mm in ends if mm != m), 0)
            wt_m, cs_m, last_m = cost[m]
            if inst.makespan_only:
                cand = self._scan_makespan(m, j, grouped)
                last, pos = cand
                span = max(others, last)
                key: Key = (span, tl - last_m + last)
            else:
                # A place on m can only win if m's tardiness stays within this.
                limit = NO_LIMIT if best is None else best[0][0] - (tw - wt_m)
                got = self._scan_general(m, j, grouped, limit)
                if got is None:
                    continue
                wt, cs, last, pos = got
                key = (tw - wt_m + wt, tc - cs_m + cs, max(others, last), tl - last_m + last)
            if best is None or key < best[0]:
                best = (key, m, pos)
        return best

    def _positions(self, m: int, j: int, grouped: bool) -> range | list[int]:
        seq = self.seqs[m]
        first = self.inst.pin_len[m]  # nothing goes before the pinned jobs
        if not grouped:
            return range(first, len(seq) + 1)
        sj = self.inst.setup[j]
        setup = self.inst.setup
        out = [len(seq)]
        # Right after the latest job with the same setup (the last pinned one counts).
        if not self.inst.coupled:
            ss = self.SS[m]
            if sj in ss:
                k = len(ss) - 1 - ss[::-1].index(sj)  # a reversed search at C speed
                if k >= first - 1 and k + 1 < len(seq):
                    out.append(k + 1)
            if first == 0 and self.inst.init_setup[m] == sj:
                out.append(0)
            return out
        for k in range(len(seq) - 1, first - 2, -1):
            if k >= 0 and setup[seq[k]] == sj:
                if k + 1 < len(seq):
                    out.append(k + 1)
                break
        if first == 0 and self.inst.init_setup[m] == sj:
            out.append(0)
        return out

    def _scan_makespan(self, m: int, j: int, grouped: bool) -> tuple[int, int]:
        """(the machine's new last end, position) minimising it."""
        inst = self.inst
        if not inst.no_idle[m]:
            got = self._scan_general(m, j, grouped)
            assert got is not None
            return got[2], got[3]
        seq = self.seqs[m]
        stm, setup = inst.st[m], inst.setup
        pj = inst.p[m][j]
        sj = setup[j]
        row_j = stm[sj]
        L = len(seq)
        base = self.C[m][-1] if L else inst.free_at[m]
        best_d, best_pos = None, 0
        for pos in self._positions(m, j, grouped):
            prev = inst.init_setup[m] if pos == 0 else setup[seq[pos - 1]]
            d = stm[prev][sj] + pj
            if pos < L:
                nxt = setup[seq[pos]]
                d += row_j[nxt] - stm[prev][nxt]
            if best_d is None or d < best_d:
                best_d, best_pos = d, pos
        assert best_d is not None
        return base + best_d, best_pos

    def _scan_general(
        self, m: int, j: int, grouped: bool, limit: int = 1 << 62
    ) -> tuple[int, int, int, int] | None:
        """(weighted tardiness, changeover, last end, position): the best for this machine.

        Places whose tardiness must exceed `limit` are skipped without walking
        their suffix (None if every place is): a suffix shifted later never
        gets less tardy than it was.
        """
        inst = self.inst
        if inst.timed[m]:
            return self._scan_timed(m, j, grouped, limit)
        seq = self.seqs[m]
        pm, stm, setup, rel, due, w = (
            inst.p[m],
            inst.st[m],
            inst.setup,
            inst.release,
            inst.due,
            inst.weight,
        )
        C, W, S, lat = self.C[m], self.W[m], self.S[m], self.lat[m]
        PW, PWL, early = self.PW[m], self.PWL[m], self.early[m]
        L = len(seq)
        sj, pj, rj, dj, wj = setup[j], pm[j], rel[j], due[j], w[j]
        no_idle = inst.no_idle[m]
        makespan_only = inst.makespan_only
        wt_total = W[-1] if L else 0
        cs_total = S[-1] if L else 0
        best: tuple[int, int, int, int] | None = None
        best_cmp: tuple[int, int, int] | None = None
        for pos in self._positions(m, j, grouped):
            if pos == 0:
                t, prev, wt, cs = inst.free_at[m], inst.init_setup[m], 0, 0
            else:
                t, prev, wt, cs = C[pos - 1], setup[seq[pos - 1]], W[pos - 1], S[pos - 1]
            c = stm[prev][sj]
            t += c
            if t < rj:
                t = rj
            t += pj
            if t > dj:
                wt += wj * (t - dj)
            cs += c
            if pos == L:
                last = t
            elif no_idle:
                q = seq[pos]
                c2 = stm[sj][setup[q]]
                delta = t + c2 + pm[q] - C[pos]
                cs += c2 + (cs_total - S[pos])
                last = C[L - 1] + delta
                old_suffix = wt_total - (W[pos - 1] if pos else 0)
                if delta == 0:
                    wt += old_suffix
                elif delta > 0:
                    if wt + old_suffix > limit:
                        continue
                    wt += PWL[L] - PWL[pos] + delta * (PW[L] - PW[pos])
                    for k in early[bisect_left(early, pos) :]:
                        x = lat[k] + delta
                        if x > 0:
                            wt += w[seq[k]] * x
                else:
                    for k in range(pos, L):
                        x = lat[k] + delta
                        if x > 0:
                            wt += w[seq[k]] * x
            else:
                prev = sj
                k = pos
                while k < L:
                    if k > pos and t == C[k - 1]:
                        # From here the machine runs exactly as before.
                        wt += wt_total - W[k - 1]
                        cs += cs_total - S[k - 1]
                        t = C[L - 1]
                        break
                    q = seq[k]
                    sq = setup[q]
                    c = stm[prev][sq]
                    t += c
                    if t < rel[q]:
                        t = rel[q]
                    t += pm[q]
                    if t > due[q]:
                        wt += w[q] * (t - due[q])
                    cs += c
                    prev = sq
                    k += 1
                last = t
            cmp = (last, 0, 0) if makespan_only else (wt, cs, last)
            if best_cmp is None or cmp < best_cmp:
                best_cmp, best = cmp, (wt, cs, last, pos)
                if not makespan_only:
                    limit = min(limit, wt)
        return best

    def _scan_timed(
        self, m: int, j: int, grouped: bool, limit: int
    ) -> tuple[int, int, int, int] | None:
        """_scan_general for a timed machine: every step through `Instance.advance`."""
        inst = self.inst
        seq = self.seqs[m]
        C, W, S, R = self.C[m], self.W[m], self.S[m], self.R[m]
        setup, rel, due, w, st = inst.setup, inst.release, inst.due, inst.weight, inst.st[m]
        L = len(seq)
        wt_total = W[-1] if L else 0
        cs_total = S[-1] if L else 0
        best: tuple[int, int, int, int] | None = None
        best_cmp: tuple[int, int, int] | None = None
        for pos in self._positions(m, j, grouped):
            if pos == 0:
                t, prev, wt, cs = inst.free_at[m], inst.init_setup[m], 0, 0
            else:
                t, prev, wt, cs = R[pos - 1], setup[seq[pos - 1]], W[pos - 1], S[pos - 1]
            last = 0
            for k in range(pos - 1, L):
                q = j if k == pos - 1 else seq[k]
                if k >= pos and k and t == R[k - 1] and prev == setup[seq[k - 1]]:
                    # Free at the same time with the same setup: the rest is as before.
                    wt += wt_total - W[k - 1]
                    cs += cs_total - S[k - 1]
                    last = C[L - 1]
                    break
                _, _, end, _, t = inst.advance(m, t, prev, q, rel[q])
                cs += st[prev][setup[q]]
                if end > due[q]:
                    wt += w[q] * (end - due[q])
                prev = setup[q]
                last = end
            cmp = (last, 0, 0) if inst.makespan_only else (wt, cs, last)
            if best_cmp is None or cmp < best_cmp:
                best_cmp, best = cmp, (wt, cs, last, pos)
        return best

    def _best_coupled(self, j: int, grouped: bool) -> tuple[Key, int, int] | None:
        inst = self.inst
        best: tuple[Key, int, int] | None = None
        # From the end back: the places that move least come first (and, priced
        # incrementally, set the bound that drops the others early).
        if self._uses_pricer():
            pricer = self._loaded()
            for m in inst.capable[j]:
                for pos in reversed(self._positions(m, j, grouped)):
                    key = pricer.price(j, m, pos, None if best is None else best[0])
                    if key is not None:
                        best = (key, m, pos)
            return best
        for m in inst.capable[j]:
            seq = self.seqs[m]
            for pos in reversed(self._positions(m, j, grouped)):
                seq.insert(pos, j)
                key = inst.key_of(self.seqs)
                del seq[pos]
                if key is not None and (best is None or key < best[0]):
                    best = (key, m, pos)
        return best

    # --- swaps (makespan) ----------------------------------------------------

    def best_swap(self) -> tuple[Key, int, int] | None:
        """(key, j, k): the best exchange of a job j on the latest machine with a job k
        elsewhere, both keeping their positions. Makespan on uncoupled problems, between
        machines where nothing waits for a release (so a change is one delta, O(1)).
        """
        inst = self.inst
        if not inst.makespan_only or inst.coupled:
            return None
        ends = sorted(((c[-1], m) for m, c in enumerate(self.C) if c), reverse=True)
        if len(ends) < 1:
            return None
        crit = ends[0][1]
        if not inst.no_idle[crit]:
            return None
        setup = inst.setup
        tl = sum(c[2] for c in self.cost)
        cur = self.key()
        best: tuple[Key, int, int] | None = None
        s1, p1, st1 = self.seqs[crit], inst.p[crit], inst.st[crit]
        last1 = self.cost[crit][2]
        for m2 in range(inst.m):
            if m2 == crit or not inst.no_idle[m2]:
                continue
            others = next((e for e, mm in ends if mm not in (crit, m2)), 0)
            s2, p2, st2 = self.seqs[m2], inst.p[m2], inst.st[m2]
            last2 = self.cost[m2][2]
            for a, j in enumerate(s1):
                if p2[j] < 0 or a < inst.pin_len[crit]:
                    continue
                sj = setup[j]
                pv1 = inst.init_setup[crit] if a == 0 else setup[s1[a - 1]]
                nx1 = setup[s1[a + 1]] if a + 1 < len(s1) else -1
                out1 = st1[pv1][sj] + p1[j] + (st1[sj][nx1] if nx1 >= 0 else 0)
                for b, k in enumerate(s2):
                    if p1[k] < 0 or b < inst.pin_len[m2]:
                        continue
                    sk = setup[k]
                    d1 = st1[pv1][sk] + p1[k] + (st1[sk][nx1] if nx1 >= 0 else 0) - out1
                    if last1 + d1 >= cur[0] and d1 >= 0:
                        continue  # the latest machine gets no earlier
                    pv2 = inst.init_setup[m2] if b == 0 else setup[s2[b - 1]]
                    nx2 = setup[s2[b + 1]] if b + 1 < len(s2) else -1
                    d2 = (
                        st2[pv2][sj]
                        + p2[j]
                        + (st2[sj][nx2] if nx2 >= 0 else 0)
                        - st2[pv2][sk]
                        - p2[k]
                        - (st2[sk][nx2] if nx2 >= 0 else 0)
                    )
                    key: Key = (max(others, last1 + d1, last2 + d2), tl + d1 + d2)
                    if best is None or key < best[0]:
                        best = (key, j, k)
        return best

    def swap(self, j: int, k: int) -> None:
        mj, mk = self.where[j], self.where[k]
        a, b = self.seqs[mj].index(j), self.seqs[mk].index(k)
        self.seqs[mj][a], self.seqs[mk][b] = k, j
        self.where[j], self.where[k] = mk, mj
        self._key = None
        self._refresh(mj, a)
        self._refresh(mk, b)
