"""The feasibility checker: it trusts nothing a planner says and recomputes every figure.

Written from the problem's own terms (ids, mappings), not from the planner's
index arrays, so that a bug in the shared decoder cannot hide here.
"""

from __future__ import annotations

from collections.abc import Iterable

from cellctl.planning.model import PREVIOUS, Assignment, Figures, Problem


class ScheduleInvalid(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def check(problem: Problem, assignments: Iterable[Assignment]) -> Figures:
    """The figures of a feasible schedule; ScheduleInvalid listing every violation otherwise."""
    bad: list[str] = []
    jobs = {j.id: j for j in problem.jobs}
    machines = {m.id: m for m in problem.machines}
    placed: dict[str, Assignment] = {}
    for a in assignments:
        if a.job in placed:
            bad.append(f"{a.job}: placed twice")
            continue
        placed[a.job] = a
        job = jobs.get(a.job)
        if job is None:
            bad.append(f"{a.job}: not a job of the problem")
            continue
        if a.machine not in job.durations:
            bad.append(f"{a.job}: machine {a.machine} cannot run it")
            continue
        if a.end - a.start != job.durations[a.machine]:
            bad.append(f"{a.job}: lasts {a.end - a.start}, not {job.durations[a.machine]}")
        if a.start < job.release:
            bad.append(f"{a.job}: starts at {a.start}, before its release {job.release}")
    for jid in jobs:
        if jid not in placed:
            bad.append(f"{jid}: not placed")
    for jid, a in placed.items():
        job = jobs.get(jid)
        for q in job.after if job else ():
            qa = placed.get(q)
            if qa is not None and qa.end > a.start:
                bad.append(f"{jid}: starts at {a.start}, before {q} ends at {qa.end}")
    by_machine: dict[str, list[Assignment]] = {}
    for a in placed.values():
        if a.machine in machines:
            by_machine.setdefault(a.machine, []).append(a)
    total_changeover = 0
    for mid, pins in problem.pinned.items():
        head = tuple(a.job for a in sorted(by_machine.get(mid, []), key=lambda a: a.start))
        if head[: len(pins)] != tuple(pins):
            bad.append(f"{mid}: must open with {', '.join(pins)} (pinned), opens with {head}")
    for mid, seq in by_machine.items():
        seq.sort(key=lambda a: a.start)
        mach = machines[mid]
        ready, loaded = mach.free_at, mach.initial_setup
        for a in seq:
            job = jobs[a.job]
            need = job.setup
            want = problem.changeover(mid, loaded, need)
            if a.setup_before != loaded:
                bad.append(f"{a.job}: says {mid} held {a.setup_before}, it held {loaded}")
            if a.changeover != want:
                bad.append(
                    f"{a.job}: changeover {a.changeover} on {mid}, {loaded}→{need} is {want}"
                )
            if a.changeover_start < ready or a.changeover_start + want > a.start:
                bad.append(
                    f"{a.job}: on {mid} its changeover [{a.changeover_start}, "
                    f"{a.changeover_start + want}) and run from {a.start} overlap what the "
                    f"machine does until {ready}"
                )
            if want and problem.is_manual(mid, loaded, need):
                _in_shift(bad, problem, f"{a.job}: manual changeover", a.changeover_start, want)
            ready = a.end
            if job.clear:
                if a.clear_start is None or a.clear_start < a.end:
                    bad.append(f"{a.job}: its bed clearing must follow its end {a.end}")
                else:
                    _in_shift(bad, problem, f"{a.job}: bed clearing", a.clear_start, job.clear)
                    ready = a.clear_start + job.clear
            total_changeover += want
            loaded = need
    _reservations(bad, problem, placed)
    if bad:
        raise ScheduleInvalid(bad)
    wt = 0
    for jid, a in placed.items():
        job = jobs[jid]
        if job.due is not None and a.end > job.due:
            wt += job.weight * (a.end - job.due)
    return Figures(
        objective=problem.objective,
        weighted_tardiness=wt,
        changeover=total_changeover,
        makespan=max((a.end for a in placed.values()), default=0),
    )


def _in_shift(bad: list[str], problem: Problem, what: str, start: int, length: int) -> None:
    if problem.shifts is None:
        return
    if not any(s <= start and start + length <= e for s, e in problem.shifts):
        bad.append(f"{what} [{start}, {start + length}) is not inside one operator shift")


def _reservations(bad: list[str], problem: Problem, placed: dict[str, Assignment]) -> None:
    """No device is held (`reserves`) while it does anything else or is held by another job.

    A job holds each device it names over its run, [start, end); `@previous`
    holds the machine of its one `after` job from when that job leaves it (its
    end, or the end of its bed clearing) until this job ends.
    """
    jobs = {j.id: j for j in problem.jobs}
    if not any(j.reserves for j in jobs.values()):
        return
    # device -> (from, to, job, what): everything a device does, then every hold.
    busy: dict[str, list[tuple[int, int, str, str]]] = {}
    for jid, a in placed.items():
        job = jobs.get(jid)
        if job is None or a.machine not in job.durations:
            continue
        busy.setdefault(a.machine, []).append((a.changeover_start, a.end, jid, "runs"))
        if job.clear and a.clear_start is not None:
            busy[a.machine].append((a.clear_start, a.clear_start + job.clear, jid, "clears"))
    holds: list[tuple[str, int, int, str, str | None]] = []  # device, from, to, holder, excused
    for jid, a in placed.items():
        job = jobs.get(jid)
        if job is None:
            continue
        for d in job.reserves:
            if d != PREVIOUS:
                holds.append((d, a.start, a.end, jid, None))
                continue
            q = placed.get(job.after[0]) if len(job.after) == 1 else None
            if q is None:
                continue
            qjob = jobs[q.job]
            left = q.end
            if qjob.clear and q.clear_start is not None:
                left = q.clear_start + qjob.clear
            holds.append((q.machine, left, max(left, a.end), jid, q.job))
    for k, (d, s, e, who, excused) in enumerate(holds):
        if e <= s:
            continue
        for bs, be, other, what in busy.get(d, []):
            if other != who and other != excused and bs < e and s < be and be > bs:
                bad.append(
                    f"{who}: holds {d} over [{s}, {e}), but {other} {what} there [{bs}, {be})"
                )
        for d2, s2, e2, who2, _ in holds[k + 1 :]:
            if d2 == d and who2 != who and s2 < e and s < e2 and e2 > s2:
                bad.append(f"{who} and {who2} both hold {d} over [{max(s, s2)}, {min(e, e2)})")
