"""Robot preparations ahead of a manual changeover (`[scheduler.preparation.<key>.robot]`).

A robot fetching the next spool or fixture to a device while that device
still works or waits: for each changeover the planner has announced
(`changeover.Announcer`) whose keys declare a robot program, the job service
submits a job of one step running that program (`process`, default `tend`,
with its `reserves`). The planner then plans it like any other step: on a
device offering the process, when the devices it reserves are free, urgent
(priority `PRIORITY`) so that it comes before the change. Only while an
operator is on shift: nothing moves for a change nobody is there to do. A
request withdrawn before its preparation ran cancels it.

The job id names the step and the key (`prep.<job>.<index>.<key>`), and a
submission with a taken id returns the stored job: after a restart the
announcement made again finds the same job, none is duplicated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cellctl.jobs.spec import JobSpec
from cellctl.model import ProgramKind
from cellctl.scheduler_config import SchedulerSection

if TYPE_CHECKING:  # the planner's modules load only with the planner (issue 27)
    from cellctl.jobs.changeover import Needed

PRIORITY = 100


def job_id(need: Needed, key: str) -> str:
    raw = f"prep.{need.step.job_id}.{need.step.index}.{key}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:128]


def wanted(shown: Mapping[str, Needed], cfg: SchedulerSection, now: float) -> dict[str, JobSpec]:
    """The preparation jobs the announced changeovers call for now (job id → spec)."""
    out: dict[str, JobSpec] = {}
    for need in shown.values():
        for key in need.load:
            prep = cfg.preparation.get(key)
            if prep is None or prep.robot is None:
                continue
            if need.changeover_start - now > prep.lead_s:
                continue
            robot = prep.robot
            jid = job_id(need, key)
            out[jid] = JobSpec.model_validate(
                {
                    "id": jid,
                    "priority": PRIORITY,
                    "route": [
                        {
                            "process": robot.process,
                            "program": {"kind": ProgramKind.ROBOT_PROGRAM, "name": robot.program},
                            "estimated_s": robot.estimated_s,
                            "reserves": list(robot.reserves),
                        }
                    ],
                }
            )
    if out and not cfg.on_shift(now):
        return {}
    return out
