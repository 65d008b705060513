"""Bed clearing as a gate: which printers hold a finished part, and the SQL for it.

A device listed in `[scheduler] bed_clearing` that ends a step (done) whose
route has no unload step after it (a next step reserving `@previous`) keeps
the part on its bed: it takes no new step until an operator confirms the bed
clear (MQTT `answer` with kind `clear_bed`, or `cellctl bed-clear`). The mark
is written in the same transaction as the step's end, so a crash cannot lose
it; it is published as an operator request of kind `clear_bed`, again after a
restart.
"""

from __future__ import annotations

import sqlite3

from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.jobs.spec import PREVIOUS


def leaves_part(job: JobRecord, step: StepRecord) -> bool:
    """True unless the step's next route step (same unit) unloads it."""
    nxt = step.index + 1
    if nxt >= len(job.steps):
        return True
    following = job.steps[nxt]
    return following.unit != step.unit or PREVIOUS not in following.reserves


def load(conn: sqlite3.Connection) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute("SELECT device_id, step_key FROM bed_uncleared")}


def mark(conn: sqlite3.Connection, device_id: str, step_key: str, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bed_uncleared (device_id, step_key, since) VALUES (?, ?, ?)",
        (device_id, step_key, now),
    )


def clear(conn: sqlite3.Connection, device_id: str) -> None:
    conn.execute("DELETE FROM bed_uncleared WHERE device_id = ?", (device_id,))
