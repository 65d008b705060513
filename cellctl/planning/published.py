"""The plan as subscribers see it: per device its sequence in wall-clock time, and
the operator's worklist (manual changeovers and bed clearings, soonest first).

Pure: a `Problem` in the planner's units and its `Plan`, plus where problem
time 0 lies (`origin`, Unix seconds) and how long a unit is (`unit_s`), in;
plain dicts out, shaped as `PlanPayload` (schema `cellctl/schemas/payload.plan.json`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cellctl.planning.model import Plan, Problem
from cellctl.planning.problem_export import problem_to_json


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hold(_Strict):
    device: str  # held for this job while it runs elsewhere (a robot tending it)
    start: float
    end: float


class PlannedStep(_Strict):
    job: str
    setup: str
    start: float  # Unix seconds
    end: float
    changeover_s: float  # before this job; 0 for none
    changeover_from: str
    changeover_start: float
    manual: bool  # the changeover needs an operator
    clear_start: float | None = None
    reserved: list[Hold] = []


class WorkItem(_Strict):
    device: str
    kind: Literal["changeover", "clear"]
    job: str  # the job it is for (changeover) or after (clear)
    start: float  # when it is needed (Unix seconds)
    duration_s: float
    change: str  # "from → to" for a changeover; "" for a clearing


class PlanFigures(_Strict):
    weighted_tardiness: float
    changeover_s: float
    makespan: float  # Unix seconds of the last planned end


class LearnedChange(_Strict):
    device: str
    change: str  # "from → to" over the keys that change
    configured_s: float
    learned_s: float | None  # None: too few measurements yet
    samples: int


class LearnedSpeed(_Strict):
    factor: float | None  # actual ÷ estimated step time; None: too few steps yet
    steps: int


class Learned(_Strict):
    changeovers: list[LearnedChange]
    speed: dict[str, LearnedSpeed]


class PlanPayload(_Strict):
    v: Literal[1]
    ts: float
    method: str
    origin: float
    figures: PlanFigures
    devices: dict[str, list[PlannedStep]]
    worklist: list[WorkItem]
    learned: Learned | None = None  # configured vs learned durations (jobs/learning.py)


class ProblemPayload(_Strict):
    """Retained on `plan/problem`: the problem the current plan answers, in the offline
    format (cellctl/schemas/problem.json), its time 0 at `origin` (Unix seconds) less
    `shift` seconds (problem_export.py). `cellctl plan --export` writes `problem`."""

    v: Literal[1]
    ts: float
    origin: float
    shift: int
    problem: dict[str, Any]


def problem_payload(problem: Problem, origin: float, ts: float) -> dict[str, Any]:
    """The retained `plan/problem` message for this problem."""
    doc, shift = problem_to_json(problem)
    return {"v": 1, "ts": ts, "origin": origin, "shift": shift, "problem": doc}


def _pairs(label: str) -> dict[str, str] | None:
    if not label:
        return {}
    parts = [p.split("=", 1) for p in label.split(",")]
    return None if any(len(p) != 2 for p in parts) else {k: v for k, v in parts}


def change_text(before: str, after: str) -> str:
    """ "from → to" for an operator: with live setup labels ("key=value,…") only the keys
    that change (what the target names and differs), else the two labels."""
    a, b = _pairs(before), _pairs(after)
    if a is None or b is None:
        return f"{before} → {after}"
    keys = [k for k in b if a.get(k) != b[k]]
    old = ",".join(f"{k}={a[k]}" for k in keys if k in a) or "(none)"
    return f"{old} → {','.join(f'{k}={b[k]}' for k in keys)}"


def plan_payload(
    problem: Problem, result: Plan, origin: float, unit_s: float, ts: float
) -> dict[str, Any]:
    """The retained `plan` message for this plan."""

    def at(t: int) -> float:
        return round(origin + t * unit_s, 3)

    setups = {j.id: j.setup for j in problem.jobs}
    clears = {j.id: j.clear for j in problem.jobs}
    devices: dict[str, list[dict[str, Any]]] = {m.id: [] for m in problem.machines}
    work: list[dict[str, Any]] = []
    for a in sorted(result.assignments, key=lambda a: (a.machine, a.start)):
        setup = setups[a.job]
        manual = problem.is_manual(a.machine, a.setup_before, setup)
        devices[a.machine].append(
            {
                "job": a.job,
                "setup": setup,
                "start": at(a.start),
                "end": at(a.end),
                "changeover_s": a.changeover * unit_s,
                "changeover_from": a.setup_before,
                "changeover_start": at(a.changeover_start),
                "manual": manual,
                "clear_start": at(a.clear_start) if a.clear_start is not None else None,
                "reserved": [
                    {"device": d, "start": at(start), "end": at(end)}
                    for d, start, end in a.reserved
                ],
            }
        )
        if a.changeover and manual:
            work.append(
                {
                    "device": a.machine,
                    "kind": "changeover",
                    "job": a.job,
                    "start": at(a.changeover_start),
                    "duration_s": a.changeover * unit_s,
                    "change": change_text(a.setup_before, setup),
                }
            )
        if a.clear_start is not None:
            work.append(
                {
                    "device": a.machine,
                    "kind": "clear",
                    "job": a.job,
                    "start": at(a.clear_start),
                    "duration_s": clears[a.job] * unit_s,
                    "change": "",
                }
            )
    work.sort(key=lambda w: (w["start"], w["device"]))
    f = result.figures
    return {
        "v": 1,
        "ts": ts,
        "method": result.method,
        "origin": origin,
        "figures": {
            "weighted_tardiness": f.weighted_tardiness * unit_s,
            "changeover_s": f.changeover * unit_s,
            "makespan": at(f.makespan),
        },
        "devices": devices,
        "worklist": work,
    }
