"""What `cellctl jobs` prints, from the jobs' JSON form.

Both forms of the command (read from the store, or the `jobs` command over
MQTT) arrive at the same JSON (`JobRecord.as_dict()`, plus `transitions` for
one job), so one printer serves both and their output is the same.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from cellctl.model import JobState

EXIT_OK, EXIT_FAIL = 0, 1
RECENT_S = 86400.0  # finished jobs older than this are left out unless --all
J = TypeVar("J", bound=Mapping[str, Any])


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def job_line(job: Mapping[str, Any]) -> str:
    steps = job.get("steps", [])
    done = sum(1 for s in steps if s.get("state") == "done")
    reason = job.get("reason") or ""
    tail = f"  {reason}" if reason and reason != "accepted" else ""
    return (
        f"{job['id']:<28} {job['state']:<9} {done}/{len(steps):<4} "
        f"prio {job.get('priority', 0):<4} {_when(job.get('created'))}{tail}"
    )


def hold_cause(reason: str) -> str:
    """What stopped a held step, from the reason its device gave."""
    low = reason.lower()
    if "emergency stop" in low or "m112" in low:
        return "emergency stop"
    # A device-side stop that no cancel asked for holds the step as "stopped at <device>".
    if "operator stop" in low or "stopped on request" in low or low.startswith("stopped at "):
        return "operator stop"
    if "interrupted" in low or "link lost" in low:
        return "link or daemon interrupted"
    return "device fault"


def hold_answers(step: Mapping[str, Any]) -> list[str]:
    """The answers that apply to a held step: resume from a line only for G-code."""
    kind = (step.get("program") or {}).get("kind")
    return ["retry", "resume", "fail", "done"] if kind == "gcode" else ["retry", "fail", "done"]


def hold_hint(job_id: str, step: Mapping[str, Any]) -> str:
    cause = hold_cause(str(step.get("reason", "")))
    first = ""
    if cause == "emergency stop":
        first = "reset the device first (cellctl reset --all), then "
    answers = "|".join(hold_answers(step))
    return f"    held by {cause}: {first}cellctl answer {job_id} {step['index']} {answers}"


def recent(jobs: Sequence[J]) -> list[J]:
    """Open jobs, and finished ones updated within the last day."""
    now = time.time()
    return [
        j
        for j in jobs
        if not JobState(j["state"]).terminal or now - float(j.get("updated") or 0) < RECENT_S
    ]


def show(jobs: Sequence[Mapping[str, Any]], one: str | None, as_json: bool) -> int:
    """Print the list, or with `one` that job's steps and `transitions`; the exit code."""
    if as_json:
        print(json.dumps(list(jobs), indent=2, default=str))
        return EXIT_OK
    if one is not None:
        if not jobs:
            print(f"no job {one!r}", file=sys.stderr)
            return EXIT_FAIL
        job = jobs[0]
        print(job_line(job))
        for s in job.get("steps", []):
            last = s.get("last_acked_line")
            line = f" last line {last}" if last is not None else ""
            print(
                f"  step {s['index']:<3} {s['process']:<10} {s['state']:<9} "
                f"{s.get('device') or '-':<10} attempt {s.get('attempt', 0)}{line}  "
                f"{s.get('reason', '')}"
            )
            if s.get("state") == "held":
                print(hold_hint(job["id"], s))
        for h in job.get("transitions", []):
            what = "job" if h.get("idx") is None else f"step {h['idx']}"
            print(
                f"  {_when(h.get('at'))} {what:<8} {h.get('from_state') or '-'} → "
                f"{h.get('to_state')}  {h.get('reason', '')}"
            )
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(job_line(job))
    return EXIT_OK
