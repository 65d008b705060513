"""The planner: which device runs which step, in what order, with which changeovers.

Pure Python: no I/O, no asyncio, no clock except the one a caller passes in.
See docs/scheduling.md for the model, the objective and the methods.

The names below load on first use (PEP 562), not with the package: the daemon
imports `cellctl.planning.calendar` for `[scheduler.calendar]`, and with it this
package, but runs the solver only with `[scheduler] method = "planner"`. Loading it
all eagerly cost the idle daemon 2.7 MiB (issue 27).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cellctl.planning.checker import ScheduleInvalid, check
    from cellctl.planning.methods import METHODS
    from cellctl.planning.model import Assignment, Figures, Job, Machine, Objective, Plan, Problem
    from cellctl.planning.planner import evaluate, plan
    from cellctl.planning.problem_format import ProblemInvalid, parse_problem, plan_to_json

_HOME = {
    "ScheduleInvalid": "checker",
    "check": "checker",
    **dict.fromkeys(
        ("Assignment", "Figures", "Job", "Machine", "Objective", "Plan", "Problem"), "model"
    ),
    "METHODS": "methods",
    **dict.fromkeys(("evaluate", "plan"), "planner"),
    **dict.fromkeys(("ProblemInvalid", "parse_problem", "plan_to_json"), "problem_format"),
}

__all__ = [
    "METHODS",
    "Assignment",
    "Figures",
    "Job",
    "Machine",
    "Objective",
    "Plan",
    "Problem",
    "ProblemInvalid",
    "ScheduleInvalid",
    "check",
    "evaluate",
    "parse_problem",
    "plan",
    "plan_to_json",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
