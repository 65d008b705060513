"""The planner: which device runs which step, in what order, with which changeovers.

Pure Python: no I/O, no asyncio, no clock except the one a caller passes in.
See docs/scheduling.md for the model, the objective and the methods.
"""

from cellctl.planning.checker import ScheduleInvalid, check
from cellctl.planning.model import Assignment, Figures, Job, Machine, Objective, Plan, Problem
from cellctl.planning.planner import METHODS, evaluate, plan
from cellctl.planning.problem_format import ProblemInvalid, parse_problem, plan_to_json

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
