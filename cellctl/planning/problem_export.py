"""A `Problem` back into the offline problem format (cellctl/schemas/problem.json).

Pure. `cellctl plan --export` writes the live cell's problem with it, so that
anyone can replay it with `cellctl plan --problem`. The format's times are
non-negative, while a live job already past its due date has a negative one:
every time is then shifted later by the same amount (and every job released
at that shift, so none starts before "now"), which leaves every figure of
every plan the same. Operator shifts are not exported: the live problem holds
them as windows, the format as a calendar. The empty setup (a live device with
none of the keys the waiting steps name) is written `NO_SETUP`: the format
needs a name.
"""

from __future__ import annotations

from typing import Any

from cellctl.planning.model import Problem

NO_SETUP = "(none)"  # live labels are "key=value,…", so this never collides


def _name(label: str) -> str:
    return label or NO_SETUP


def problem_to_json(problem: Problem) -> tuple[dict[str, Any], int]:
    """The problem as JSON, and the shift applied to its times (0: none)."""
    dues = [j.due for j in problem.jobs if j.due is not None]
    shift = max(0, -min(dues, default=0))
    jobs: list[dict[str, Any]] = []
    for j in problem.jobs:
        doc: dict[str, Any] = {
            "id": j.id,
            "setup": _name(j.setup),
            "durations": dict(sorted(j.durations.items())),
        }
        if j.release + shift:
            doc["release"] = j.release + shift
        if j.due is not None:
            doc["due"] = j.due + shift
        if j.weight != 1:
            doc["weight"] = j.weight
        if j.after:
            doc["after"] = list(j.after)
        if j.clear:
            doc["clear"] = j.clear
        if j.reserves:
            doc["reserves"] = list(j.reserves)
        jobs.append(doc)
    setup_times: dict[str, dict[str, dict[str, Any]]] = {}
    for m, rows in problem.setup_times.items():
        table: dict[str, dict[str, Any]] = {}
        for a, row in sorted(rows.items()):
            cells: dict[str, Any] = {}
            for b, t in sorted(row.items()):
                if a == b:
                    continue
                cells[_name(b)] = {"min": t, "manual": True} if problem.is_manual(m, a, b) else t
            if cells:
                table[_name(a)] = cells
        setup_times[m] = table
    out: dict[str, Any] = {
        "objective": problem.objective.value,
        "time_unit": problem.time_unit,
        "machines": [
            {"id": m.id, "initial_setup": _name(m.initial_setup), "free_at": m.free_at + shift}
            for m in problem.machines
        ],
        "setup_times": setup_times,
        "jobs": jobs,
    }
    pinned = {m: list(ks) for m, ks in problem.pinned.items() if ks}
    if pinned:
        out["pinned"] = pinned
    return out, shift
