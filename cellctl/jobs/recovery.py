"""What happens at start-up to steps the last run left unfinished.

A step that was STARTING had not moved anything (pre-flight only): it goes
back to the queue. A step that was RUNNING may have moved a print head for
hours: its device's recovery policy decides, and the default is to hold it
for an operator, showing the last line the firmware acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cellctl.config import RecoveryPolicy
from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.model import StepState

Changes = dict[int, dict[str, Any]]


def _line_note(step: StepRecord) -> str:
    if step.last_acked_line is None:
        return ""
    return f"; last acknowledged line {step.last_acked_line}"


def recovery_plan(job: JobRecord, policy: Callable[[str | None], RecoveryPolicy]) -> Changes:
    """Step changes (index → fields) that bring `job` into a consistent state after a restart."""
    changes: Changes = {}
    for step in job.steps:
        if step.state.terminal:
            continue
        if job.state.terminal:
            # The job ended (failed or cancelled) while this step ran: it is over too.
            changes[step.index] = {
                "state": StepState.CANCELLED,
                "reason": f"the job had {job.state} when the daemon stopped",
            }
        elif step.state == StepState.STARTING:
            changes[step.index] = {
                "state": StepState.QUEUED,
                "reason": "the daemon restarted before the step started",
                "device": None,
                "reserved": (),
            }
        elif step.state == StepState.RUNNING:
            where = f"on {step.device}" if step.device else ""
            what = f"the daemon stopped while this step ran {where}".strip() + _line_note(step)
            rule = policy(step.device)
            if rule == RecoveryPolicy.RESTART:
                changes[step.index] = {
                    "state": StepState.QUEUED,
                    "reason": what + "; restarted by the device's recovery policy",
                    "start_line": 0,
                }
            elif rule == RecoveryPolicy.FAIL:
                changes[step.index] = {"state": StepState.FAILED, "reason": what}
            else:
                # The part is still on the device: resume there, nothing else goes there.
                changes[step.index] = {
                    "state": StepState.HELD,
                    "reason": what,
                    "pinned": step.device,
                }
    return changes
