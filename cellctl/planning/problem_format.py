"""The offline problem format (JSON, schema in cellctl/schemas/problem.json) and the plan's.

`parse_problem` takes the already-decoded JSON value (no I/O here) and
returns a Problem or raises ProblemInvalid with one line per mistake, each
naming where it is (`jobs[3].durations.P9: …`). Unknown keys are mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cellctl.planning.model import Job, Machine, Objective, Plan, Problem

TOP_KEYS = {"objective", "time_unit", "machines", "setup_times", "jobs"}
MACHINE_KEYS = {"id", "initial_setup", "free_at"}
JOB_KEYS = {"id", "setup", "durations", "release", "due", "weight", "after"}


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
    setup_times = _setup_times(r, raw.get("setup_times", {}), machines, jobs, mids)
    _acyclic(r, jobs)
    if r.bad or objective is None:
        raise ProblemInvalid(r.bad)
    return Problem(
        objective=objective,
        machines=tuple(machines),
        setup_times=setup_times,
        jobs=tuple(jobs),
        time_unit=time_unit,
    )


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
        if ok and jid and setup and release is not None and weight is not None:
            out.append(Job(jid, setup, durations, release, due, weight, tuple(deps)))
    return out


def _setup_times(
    r: _Reader, raw: object, machines: list[Machine], jobs: list[Job], known: set[Any]
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
                v = r.nonneg(f"setup_times.{mid}.{a}.{b}", t)
                if v is None:
                    continue
                if a == b and v != 0:
                    r.bad.append(f"setup_times.{mid}.{a}.{b}: a setup to itself takes 0, got {v}")
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
            }
            for a in plan.assignments
        ],
    }
