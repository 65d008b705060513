"""The retained plan read back: `payload.plan` into a `Plan` on the exported problem.

Pure. `cellctl plan -c CONFIG --svg` draws the live plan with gantt.py, which
wants a `Plan` in the problem's own time: the payload's Unix seconds less its
origin, plus the export's `shift` (problem_export.py), with the empty setup
named as the export names it.
"""

from __future__ import annotations

from typing import Any

from cellctl.planning.model import Assignment, Figures, Objective, Plan
from cellctl.planning.problem_export import NO_SETUP


def plan_from_payload(doc: dict[str, Any], shift: int = 0) -> Plan:
    origin = float(doc["origin"])

    def t(at: float) -> int:
        return round(at - origin) + shift

    assignments: list[Assignment] = []
    sequences: dict[str, tuple[str, ...]] = {}
    for device, steps in doc["devices"].items():
        sequences[device] = tuple(s["job"] for s in steps)
        for s in steps:
            assignments.append(
                Assignment(
                    job=s["job"],
                    machine=device,
                    start=t(s["start"]),
                    end=t(s["end"]),
                    changeover=round(s["changeover_s"]),
                    setup_before=s["changeover_from"] or NO_SETUP,
                    changeover_start=t(s["changeover_start"]),
                    clear_start=None if s.get("clear_start") is None else t(s["clear_start"]),
                    reserved=tuple(
                        (h["device"], t(h["start"]), t(h["end"])) for h in s.get("reserved", [])
                    ),
                )
            )
    f = doc["figures"]
    figures = Figures(
        Objective.WEIGHTED_TARDINESS,
        round(f["weighted_tardiness"]),
        round(f["changeover_s"]),
        max([0, *(a.end for a in assignments)]),
    )
    return Plan(sequences, tuple(assignments), figures, str(doc["method"]))
