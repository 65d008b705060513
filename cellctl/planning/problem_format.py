"""The offline problem format (JSON, schema in cellctl/schemas/problem.json) and the plan's.

`parse_problem` takes the already-decoded JSON value (no I/O here) and
returns a Problem or raises ProblemInvalid with one line per mistake, each
naming where it is (`jobs[3].durations.P9: …`). Unknown keys are mistakes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cellctl.planning.calendar import Calendar, Shift
from cellctl.planning.instance import Instance
from cellctl.planning.model import PREVIOUS, Job, Machine, Objective, Plan, Problem

TOP_KEYS = {"objective", "time_unit", "machines", "setup_times", "jobs", "calendar", "pinned"}
MACHINE_KEYS = {"id", "initial_setup", "free_at"}
JOB_KEYS = {"id", "setup", "durations", "release", "due", "weight", "after", "clear", "reserves"}
CHANGE_KEYS = {"min", "manual"}
CALENDAR_KEYS = {"timezone", "start", "horizon_days", "shifts", "exceptions"}
# Any time, weight or count: ample (31 years in seconds), and far below the
# sentinels the planner uses (no due date, manual work beyond the calendar).
MAX_NUMBER = 10**9
MAX_SHIFTS, MAX_EXCEPTIONS = 100, 1000  # windows stay few: days × shifts
UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ProblemInvalid(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Reader:
    def __init__(self) -> None:
        self.bad: list[str] = []

    def nonneg(self, where: str, v: object, default: int | None = None) -> int | None:
        if v is None and default is not None:
            return default
        if not _is_int(v) or v < 0:  # type: ignore[operator]
            self.bad.append(f"{where}: expected an integer ≥ 0, got {_show(v)}")
            return None
        if v > MAX_NUMBER:  # type: ignore[operator]
            self.bad.append(f"{where}: at most {MAX_NUMBER:,}, got {_show(v)}")
            return None
        return v  # type: ignore[return-value]

    def text(self, where: str, v: object) -> str | None:
        if not isinstance(v, str) or not v:
            self.bad.append(f"{where}: expected a non-empty string, got {_show(v)}")
            return None
        return v

    def keys(self, where: str, obj: Mapping[str, Any], allowed: set[str], needed: set[str]) -> None:
        for k in obj:
            if k not in allowed:
                self.bad.append(
                    f"{where}{k}: unknown key; expected one of {', '.join(sorted(allowed))}"
                )
        for k in sorted(needed - obj.keys()):
            self.bad.append(f"{where}{k}: missing")


def _show(v: object) -> str:
    s = repr(v) if not isinstance(v, str) else f'"{v}"'
    return s if len(s) <= 40 else s[:37] + "..."


def parse_problem(raw: object) -> Problem:
    r = _Reader()
    if not isinstance(raw, dict):
        raise ProblemInvalid([f"expected a JSON object at the top, got {type(raw).__name__}"])
    r.keys("", raw, TOP_KEYS, {"objective", "machines", "setup_times", "jobs"})
    objective = None
    if "objective" in raw:
        try:
            objective = Objective(raw["objective"])
        except ValueError:
            r.bad.append(
                f"objective: expected one of {', '.join(o.value for o in Objective)}, "
                f"got {_show(raw['objective'])}"
            )
    time_unit = r.text("time_unit", raw.get("time_unit", "min")) or "min"
    machines = _machines(r, raw.get("machines", []))
    # Ids of machines with other mistakes still count: one mistake, one line.
    listed = raw.get("machines")
    mids = (
        {m.get("id") for m in listed if isinstance(m, dict)} if isinstance(listed, list) else set()
    )
    jobs = _jobs(r, raw.get("jobs", []), mids)
    manual: set[tuple[str, str, str]] = set()
    setup_times = _setup_times(r, raw.get("setup_times", {}), machines, jobs, mids, manual)
    _acyclic(r, jobs)
    _one_holder(r, jobs)
    shifts = None
    if raw.get("calendar") is not None:
        cal = _calendar(r, raw["calendar"])
        if cal is not None:
            if time_unit not in UNIT_SECONDS:
                r.bad.append(
                    f"time_unit: a calendar needs one of {', '.join(UNIT_SECONDS)}, got {time_unit}"
                )
            else:
                shifts = cal.windows(UNIT_SECONDS[time_unit])
                _manual_fits(r, shifts, jobs, setup_times, manual)
    pinned = _pinned(r, raw.get("pinned", {}), machines, jobs)
    if r.bad or objective is None:
        raise ProblemInvalid(r.bad)
    problem = Problem(
        objective=objective,
        machines=tuple(machines),
        setup_times=setup_times,
        jobs=tuple(jobs),
        time_unit=time_unit,
        manual=frozenset(manual),
        shifts=shifts,
        pinned=pinned,
    )
    inst = Instance(problem)  # the decoder: the one judge of deadlock
    if any(problem.pinned.values()) and inst.decode(inst.pinned_seqs) is None:
        raise ProblemInvalid(["pinned: the pinned orders contradict `after`"])
    for m, pins in enumerate(inst.pinned_seqs):
        for k, q in enumerate(pins[:-1]):
            for u in inst.holders[q]:
                if u not in {j for s in inst.pinned_seqs for j in s}:
                    raise ProblemInvalid(
                        [
                            f"pinned.{inst.machine_ids[m]}: {inst.job_ids[pins[k + 1]]} "
                            f"follows {inst.job_ids[q]}, but {inst.job_ids[u]} holds the "
                            f"machine after {inst.job_ids[q]} (@previous) and is not pinned"
                        ]
                    )
    stuck = [
        inst.job_ids[j]
        for j in inst.movable
        if all(j in inst.pin_blocked[m] for m in inst.capable[j])
    ]
    if stuck:
        raise ProblemInvalid(
            [
                f"pinned: pinned jobs wait for {jid}, which only machines whose pinned "
                "jobs wait for it can run (it would come after them)"
                for jid in stuck
            ]
        )
    return problem


def _pinned(
    r: _Reader, raw: object, machines: list[Machine], jobs: list[Job]
) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        r.bad.append(f"pinned: expected an object machine → [job ids], got {_show(raw)}")
        return {}
    mids = {m.id for m in machines}
    by_id = {j.id: j for j in jobs}
    seen: set[str] = set()
    out: dict[str, tuple[str, ...]] = {}
    for mid, ids in raw.items():
        if mid not in mids:
            r.bad.append(f"pinned.{mid}: unknown machine {mid}")
            continue
        if not isinstance(ids, list):
            r.bad.append(f"pinned.{mid}: expected a list of job ids, got {_show(ids)}")
            continue
        for k, jid in enumerate(ids):
            job = by_id.get(jid) if isinstance(jid, str) else None
            if job is None:
                r.bad.append(f"pinned.{mid}[{k}]: unknown job {_show(jid)}")
            elif mid not in job.durations:
                r.bad.append(f"pinned.{mid}[{k}]: {mid} cannot run {jid}")
            elif jid in seen:
                r.bad.append(f"pinned.{mid}[{k}]: {jid} is pinned twice")
            seen.add(str(jid))
        out[mid] = tuple(str(j) for j in ids)
    return out


def _manual_fits(
    r: _Reader,
    shifts: tuple[tuple[int, int], ...],
    jobs: list[Job],
    setup_times: Mapping[str, Mapping[str, Mapping[str, int]]],
    manual: set[tuple[str, str, str]],
) -> None:
    """Manual work longer than every shift could never be planned: say so now."""
    longest = max((e - s for s, e in shifts), default=0)
    for mid, a, b in sorted(manual):
        t = setup_times[mid][a][b]
        if t > longest:
            r.bad.append(
                f"setup_times.{mid}.{a}.{b}: a manual changeover of {t} is longer than "
                f"every operator shift (longest {longest})"
            )
    for j in jobs:
        if j.clear > longest:
            r.bad.append(
                f"jobs ({j.id}).clear: {j.clear} is longer than every operator shift "
                f"(longest {longest})"
            )
    if not shifts and (manual or any(j.clear for j in jobs)):
        r.bad.append("calendar: no operator shift within the horizon, but manual work to do")


def _clock(r: _Reader, where: str, v: object) -> dt.time | None:
    try:
        if isinstance(v, str) and len(v) == 5:
            return dt.time.fromisoformat(v)
    except ValueError:
        pass
    r.bad.append(f'{where}: expected a time "HH:MM", got {_show(v)}')
    return None


def _hours(r: _Reader, where: str, raw: object) -> list[tuple[dt.time, dt.time]]:
    if not isinstance(raw, dict):
        r.bad.append(f"{where}: expected an object with from, to, got {_show(raw)}")
        return []
    a = _clock(r, f"{where}.from", raw.get("from"))
    b = _clock(r, f"{where}.to", raw.get("to"))
    return [(a, b)] if a is not None and b is not None else []


def _calendar(r: _Reader, raw: object) -> Calendar | None:
    if not isinstance(raw, dict):
        r.bad.append(f"calendar: expected an object, got {_show(raw)}")
        return None
    before = len(r.bad)
    r.keys("calendar.", raw, CALENDAR_KEYS, {"timezone", "start", "shifts"})
    tz = r.text("calendar.timezone", raw.get("timezone"))
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            r.bad.append(f"calendar.timezone: unknown time zone {_show(tz)}")
    start = None
    try:
        start = dt.datetime.fromisoformat(str(raw.get("start")))
        if start.tzinfo is not None:
            r.bad.append("calendar.start: local time without an offset (the time zone says it)")
    except ValueError:
        r.bad.append(f'calendar.start: expected "YYYY-MM-DDTHH:MM", got {_show(raw.get("start"))}')
    horizon = r.nonneg("calendar.horizon_days", raw.get("horizon_days", 28))
    if horizon is not None and not 1 <= horizon <= 366:
        r.bad.append(f"calendar.horizon_days: expected 1 … 366, got {horizon}")
    shifts: list[Shift] = []
    raw_shifts = raw.get("shifts", [])
    if not isinstance(raw_shifts, list):
        r.bad.append(f"calendar.shifts: expected a list, got {_show(raw_shifts)}")
        raw_shifts = []
    if len(raw_shifts) > MAX_SHIFTS:
        r.bad.append(f"calendar.shifts: at most {MAX_SHIFTS} weekly shifts, got {len(raw_shifts)}")
        raw_shifts = []
    for i, sh in enumerate(raw_shifts):
        where = f"calendar.shifts[{i}]"
        hours = _hours(r, where, sh)
        days = sh.get("days", list(DAYS)) if isinstance(sh, dict) else []
        if isinstance(sh, dict):
            r.keys(f"{where}.", sh, {"days", "from", "to"}, {"from", "to"})
        if not isinstance(days, list) or not all(d in DAYS for d in days):
            r.bad.append(f"{where}.days: expected a list of {', '.join(DAYS)}, got {_show(days)}")
            continue
        for a, b in hours:
            shifts.append(Shift(frozenset(DAYS.index(d) for d in days), a, b))
    exceptions: list[tuple[dt.date, tuple[tuple[dt.time, dt.time], ...]]] = []
    raw_ex = raw.get("exceptions", [])
    if not isinstance(raw_ex, list):
        r.bad.append(f"calendar.exceptions: expected a list, got {_show(raw_ex)}")
        raw_ex = []
    if len(raw_ex) > MAX_EXCEPTIONS:
        r.bad.append(f"calendar.exceptions: at most {MAX_EXCEPTIONS}, got {len(raw_ex)}")
        raw_ex = []
    for i, ex in enumerate(raw_ex):
        where = f"calendar.exceptions[{i}]"
        if not isinstance(ex, dict):
            r.bad.append(f"{where}: expected an object with date, shifts, got {_show(ex)}")
            continue
        r.keys(f"{where}.", ex, {"date", "shifts"}, {"date", "shifts"})
        try:
            day = dt.date.fromisoformat(str(ex.get("date")))
        except ValueError:
            r.bad.append(f'{where}.date: expected "YYYY-MM-DD", got {_show(ex.get("date"))}')
            continue
        hours_list = ex.get("shifts", [])
        if not isinstance(hours_list, list):
            r.bad.append(f"{where}.shifts: expected a list, got {_show(hours_list)}")
            continue
        hours = [h for k, x in enumerate(hours_list) for h in _hours(r, f"{where}.shifts[{k}]", x)]
        exceptions.append((day, tuple(hours)))
    if len(r.bad) > before or tz is None or start is None or horizon is None:
        return None
    return Calendar(tz, start, tuple(shifts), tuple(exceptions), horizon)


def _machines(r: _Reader, raw: object) -> list[Machine]:
    if not isinstance(raw, list) or not raw:
        r.bad.append(f"machines: expected a non-empty list, got {_show(raw)}")
        return []
    out: list[Machine] = []
    seen: set[str] = set()
    for i, m in enumerate(raw):
        where = f"machines[{i}]"
        if not isinstance(m, dict):
            r.bad.append(f"{where}: expected an object, got {_show(m)}")
            continue
        r.keys(f"{where}.", m, MACHINE_KEYS, {"id", "initial_setup"})
        mid = r.text(f"{where}.id", m.get("id")) if "id" in m else None
        setup = (
            r.text(f"{where}.initial_setup", m.get("initial_setup"))
            if "initial_setup" in m
            else None
        )
        free = r.nonneg(f"{where}.free_at", m.get("free_at", 0))
        if mid is not None and mid in seen:
            r.bad.append(f"{where}.id: machine {mid} is defined twice")
            continue
        if mid is not None:
            seen.add(mid)
        if mid is not None and setup is not None and free is not None:
            out.append(Machine(mid, setup, free))
    return out


def _jobs(r: _Reader, raw: object, mids: set[Any]) -> list[Job]:
    if not isinstance(raw, list):
        r.bad.append(f"jobs: expected a list, got {_show(raw)}")
        return []
    out: list[Job] = []
    seen: set[str] = set()
    ids = {j.get("id") for j in raw if isinstance(j, dict)}
    for i, j in enumerate(raw):
        if not isinstance(j, dict):
            r.bad.append(f"jobs[{i}]: expected an object, got {_show(j)}")
            continue
        where = f"jobs[{i}]" + (f" ({j['id']})" if isinstance(j.get("id"), str) else "")
        r.keys(f"{where}.", j, JOB_KEYS, {"id", "setup", "durations"})
        jid = r.text(f"{where}.id", j.get("id")) if "id" in j else None
        if jid is not None and jid in seen:
            r.bad.append(f"{where}.id: job {jid} is defined twice")
            continue
        if jid is not None:
            seen.add(jid)
        setup = r.text(f"{where}.setup", j.get("setup")) if "setup" in j else None
        durations: dict[str, int] = {}
        raw_d = j.get("durations", {})
        ok = True
        if not isinstance(raw_d, dict):
            r.bad.append(
                f"{where}.durations: expected an object machine → time, got {_show(raw_d)}"
            )
            ok = False
        elif "durations" in j and not raw_d:
            r.bad.append(f"{where}.durations: no machine can run it (durations is empty)")
            ok = False
        else:
            for mid, d in raw_d.items():
                if mid not in mids:
                    r.bad.append(f"{where}.durations.{mid}: unknown machine {mid}")
                    ok = False
                    continue
                v = r.nonneg(f"{where}.durations.{mid}", d)
                if v is None:
                    ok = False
                else:
                    durations[mid] = v
        release = r.nonneg(f"{where}.release", j.get("release", 0))
        due = None
        if j.get("due") is not None:
            due = r.nonneg(f"{where}.due", j["due"])
            ok = ok and due is not None
        weight = r.nonneg(f"{where}.weight", j.get("weight", 1))
        clear = r.nonneg(f"{where}.clear", j.get("clear", 0))
        after = j.get("after", [])
        deps: list[str] = []
        if not isinstance(after, list):
            r.bad.append(f"{where}.after: expected a list of job ids, got {_show(after)}")
            ok = False
        else:
            for k, a in enumerate(after):
                if a == jid:
                    r.bad.append(f"{where}.after[{k}]: a job cannot come after itself")
                    ok = False
                elif not isinstance(a, str) or a not in ids:
                    r.bad.append(f"{where}.after[{k}]: unknown job {_show(a)}")
                    ok = False
                elif a not in deps:
                    deps.append(a)
        reserves = _reserves(r, where, j.get("reserves", []), mids, raw_d, deps)
        if (
            ok
            and reserves is not None
            and jid
            and setup
            and release is not None
            and weight is not None
            and clear is not None
        ):
            out.append(
                Job(jid, setup, durations, release, due, weight, tuple(deps), clear, reserves)
            )
    return out


def _reserves(
    r: _Reader, where: str, raw: object, mids: set[Any], durations: object, after: list[str]
) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        r.bad.append(f"{where}.reserves: expected a list of machine ids, got {_show(raw)}")
        return None
    before = len(r.bad)
    out: list[str] = []
    for k, d in enumerate(raw):
        at = f"{where}.reserves[{k}]"
        if d == PREVIOUS:
            if len(after) != 1:
                r.bad.append(f"{at}: {PREVIOUS} needs exactly one job in after, got {len(after)}")
        elif not isinstance(d, str) or d not in mids:
            r.bad.append(f"{at}: unknown machine {_show(d)} (a machine id or {PREVIOUS})")
        elif isinstance(durations, dict) and d in durations:
            r.bad.append(f"{at}: {d} may run this job; a job cannot hold a machine it may run on")
        if d in out:
            r.bad.append(f"{at}: {_show(d)} is reserved twice")
        out.append(str(d))
    return tuple(out) if len(r.bad) == before else None


def _setup_times(
    r: _Reader,
    raw: object,
    machines: list[Machine],
    jobs: list[Job],
    known: set[Any],
    manual: set[tuple[str, str, str]],
) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    if not isinstance(raw, dict):
        r.bad.append(
            f"setup_times: expected an object machine → from → to → time, got {_show(raw)}"
        )
        return out
    mids = {m.id for m in machines}
    for mid, rows in raw.items():
        if mid not in mids and mid not in known:
            r.bad.append(f"setup_times.{mid}: unknown machine {mid}")
            continue
        if not isinstance(rows, dict):
            r.bad.append(
                f"setup_times.{mid}: expected an object from → to → time, got {_show(rows)}"
            )
            continue
        table: dict[str, dict[str, int]] = {}
        for a, row in rows.items():
            if not isinstance(row, dict):
                r.bad.append(
                    f"setup_times.{mid}.{a}: expected an object to → time, got {_show(row)}"
                )
                continue
            table[a] = {}
            for b, t in row.items():
                where = f"setup_times.{mid}.{a}.{b}"
                if isinstance(t, dict):
                    r.keys(f"{where}.", t, CHANGE_KEYS, {"min"})
                    if not isinstance(t.get("manual", False), bool):
                        r.bad.append(f"{where}.manual: expected true or false")
                    elif t.get("manual") and a != b:
                        manual.add((mid, a, b))
                    t = t.get("min")
                    where += ".min"
                v = r.nonneg(where, t)
                if v is None:
                    continue
                if a == b and v != 0:
                    r.bad.append(f"{where}: a setup to itself takes 0, got {v}")
                    continue
                table[a][b] = v
        out[mid] = table
    # Every changeover a plan may need must be given: from the initial setup or
    # any job's setup to any job's setup, among the jobs the machine can run.
    for m in machines:
        needs = sorted({j.setup for j in jobs if m.id in j.durations})
        froms = sorted({m.initial_setup, *needs})
        if m.id not in raw:
            if len(froms) > 1:
                r.bad.append(f"setup_times.{m.id}: missing (its jobs need {len(needs)} setups)")
            continue
        table = out.get(m.id, {})
        for a in froms:
            for b in needs:
                if a != b and b not in table.get(a, {}):
                    r.bad.append(
                        f"setup_times.{m.id}.{a}.{b}: missing (a changeover {m.id} may need)"
                    )
    return out


def _one_holder(r: _Reader, jobs: list[Job]) -> None:
    """Two jobs holding one job's machine (`@previous`) would both have to follow it
    at once (one unload per part): say so."""
    holder: dict[str, str] = {}
    for j in jobs:
        if PREVIOUS in j.reserves:
            q = j.after[0]
            if q in holder:
                r.bad.append(
                    f"jobs ({j.id}).reserves: {PREVIOUS} holds {q}'s machine, "
                    f"which {holder[q]} already holds (one holder per job)"
                )
            holder.setdefault(q, j.id)


def _acyclic(r: _Reader, jobs: list[Job]) -> None:
    after = {j.id: j.after for j in jobs}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for root in after:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, k = stack.pop()
            if k == 0:
                state[node] = 1
                path.append(node)
            deps = after.get(node, ())
            if k < len(deps):
                stack.append((node, k + 1))
                nxt = deps[k]
                if state.get(nxt) == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    r.bad.append(f"jobs: a cycle in `after`: {' → '.join(reversed(cycle))}")
                    return
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()


def plan_to_json(problem: Problem, plan: Plan) -> dict[str, Any]:
    """The plan as JSON (schema: cellctl/schemas/plan.json)."""
    f = plan.figures
    return {
        "objective": problem.objective.value,
        "time_unit": problem.time_unit,
        "method": plan.method,
        "figures": {
            "weighted_tardiness": f.weighted_tardiness,
            "changeover": f.changeover,
            "makespan": f.makespan,
            "elapsed_s": round(plan.elapsed_s, 6),
            "iterations": plan.iterations,
        },
        "machines": {m: list(seq) for m, seq in plan.sequences.items()},
        "jobs": [
            {
                "id": a.job,
                "machine": a.machine,
                "start": a.start,
                "end": a.end,
                "changeover": a.changeover,
                "changeover_from": a.setup_before,
                "changeover_start": a.changeover_start,
                **({"clear_start": a.clear_start} if a.clear_start is not None else {}),
                **(
                    {"reserved": [{"device": d, "from": f, "to": t} for d, f, t in a.reserved]}
                    if a.reserved
                    else {}
                ),
            }
            for a in plan.assignments
        ],
    }
