"""The shift report: what the cell did between two instants, from its store alone.

`build(conn, cell, since, until)` reads the store (jobs, steps, transitions, and
the measured changeovers of cellctl/jobs/learning.py) and returns plain data:

- jobs done in the window (their end in it), and their lateness against `due`;
- per device: time running steps inside the window, its utilisation (that ÷
  the window), steps run, changeovers done and their minutes;
- the changeover minutes the cell spent vs what FIFO would have needed on the
  same jobs: the steps that ran in the window become an offline problem
  (`recorded_problem`: each step's actual duration on every device that can run
  it, its setup, release at its job's arrival, due, route order) planned with
  cellctl.planning's `fifo`. Both sides are priced at the configured changeover
  times (`[scheduler.changeover]`): FIFO needs changes the cell never made, which
  nothing measured, and a demo's operator answers in seconds what the config
  says takes minutes; the measured minutes are reported beside them.
  Reservations (robots) and bed clearings are left out of that problem: the
  comparison is about changeovers.

Used by `cellctl report` (a read-only connection) and the retained `report`
topic (the store's own connection, off the event loop).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from cellctl.config import Cell
from cellctl.jobs import repo
from cellctl.jobs.learning import change_pair, configured_s
from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.jobs.setup_labels import label, parse_label
from cellctl.model import JobState, StepState

NO_SETUP = "(none)"


def _needs(step: StepRecord) -> dict[str, str]:
    base = step.gcode.requirements() if step.gcode is not None else {}
    return {**base, **step.setup}


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def build_from(path: Path, cell: Cell, since: float, until: float) -> dict[str, Any]:
    """`build` on a read-only connection of its own to the store at `path` (sqlite3.Error
    when it cannot be read)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return build(conn, cell, since, until)
    finally:
        conn.close()


def build(conn: sqlite3.Connection, cell: Cell, since: float, until: float) -> dict[str, Any]:
    conn.row_factory = sqlite3.Row
    jobs = repo.load_jobs(conn)
    done_at = {
        r["job_id"]: r["at"]
        for r in conn.execute(
            "SELECT job_id, MAX(at) AS at FROM transitions WHERE idx IS NULL AND to_state = ? "
            "GROUP BY job_id",
            (JobState.DONE.value,),
        )
    }
    measured = [
        dict(r)
        for r in conn.execute(
            "SELECT device, from_setup, to_setup, automatic, seconds, at FROM measured "
            "WHERE kind = 'changeover' AND at >= ? AND at <= ? ORDER BY id",
            (since, until),
        )
    ]
    span = max(1e-9, until - since)
    done = [j for j in jobs if j.state == JobState.DONE and since <= done_at.get(j.id, -1) <= until]
    late = []
    for j in done:
        if j.due is not None and done_at[j.id] > j.due:
            late.append((j.id, (done_at[j.id] - j.due) / 60))
    devices: dict[str, dict[str, Any]] = {
        d: {"busy_s": 0.0, "steps": 0, "changeovers": 0, "changeover_s": 0.0} for d in cell.devices
    }
    ran: list[tuple[JobRecord, StepRecord]] = []
    for j in jobs:
        for s in j.steps:
            if s.device is None or s.started is None:
                continue
            end = s.ended if s.ended is not None else until
            busy = _overlap(s.started, end, since, until)
            row = devices.setdefault(
                s.device, {"busy_s": 0.0, "steps": 0, "changeovers": 0, "changeover_s": 0.0}
            )
            row["busy_s"] += busy
            if s.state == StepState.DONE and s.ended is not None and since <= s.started <= until:
                row["steps"] += 1
                ran.append((j, s))
    for m in measured:
        row = devices.setdefault(
            m["device"], {"busy_s": 0.0, "steps": 0, "changeovers": 0, "changeover_s": 0.0}
        )
        row["changeovers"] += 1
        row["changeover_s"] += m["seconds"]
    for row in devices.values():
        row["busy_s"] = round(row["busy_s"], 3)
        row["changeover_s"] = round(row["changeover_s"], 3)
        row["utilisation"] = round(row["busy_s"] / span, 4)
    spent = sum(m["seconds"] for m in measured)
    sched = cell.config.scheduler
    priced = sum(configured_s(sched, m["to_setup"]) for m in measured)
    fifo = _fifo(cell, ran, measured, since)
    return {
        "v": 1,
        "cell": cell.name,
        "since": since,
        "until": until,
        "jobs_done": len(done),
        "late": {
            "jobs": len(late),
            "minutes": round(sum(m for _, m in late), 2),
            "max_minutes": round(max((m for _, m in late), default=0.0), 2),
        },
        "devices": devices,
        "changeovers": {
            "count": len(measured),
            "minutes": round(spent / 60, 2),
            "configured_minutes": round(priced / 60, 2),
        },
        "fifo": fifo,
    }


def _fifo(
    cell: Cell,
    ran: list[tuple[JobRecord, StepRecord]],
    measured: list[dict[str, Any]],
    since: float,
) -> dict[str, Any] | None:
    """FIFO on the recorded problem: its changeover count and minutes (None: nothing ran)."""
    if not ran:
        return None
    from cellctl.planning import plan

    problem = recorded_problem(cell, ran, measured, since)
    result = plan(problem, "fifo")
    changes = sum(1 for a in result.assignments if a.changeover)
    return {
        "steps": len(problem.jobs),
        "count": changes,
        "minutes": round(result.figures.changeover / 60, 2),
        "weighted_tardiness_min": round(result.figures.weighted_tardiness / 60, 2),
        "makespan_min": round(result.figures.makespan / 60, 2),
    }


def recorded_problem(
    cell: Cell,
    ran: list[tuple[JobRecord, StepRecord]],
    measured: list[dict[str, Any]],
    since: float,
) -> Any:
    """The steps that ran as an offline problem (seconds from `since`)."""
    from cellctl.planning.model import Job, Machine, Objective, Problem

    sched = cell.config.scheduler
    keys = sorted({k for _, s in ran for k in _needs(s)})
    key_of = {s.key: s for _, s in ran}
    first_step: dict[str, StepRecord] = {}
    for _, s in sorted(ran, key=lambda js: js[1].started or 0.0):
        assert s.device is not None
        first_step.setdefault(s.device, s)
    first_change: dict[str, dict[str, Any]] = {}
    for mc in measured:
        first_change.setdefault(mc["device"], mc)

    def lab(setup: dict[str, str]) -> str:
        return label({k: v for k, v in setup.items() if k in keys}) or NO_SETUP

    machines = []
    for d, dev in cell.devices.items():
        start: dict[str, str] = dict(dev.common.setup)
        first = first_step.get(d)
        ch = first_change.get(d)
        if first is not None:
            start.update(_needs(first))
            if ch is not None and first.started is not None and ch["at"] <= first.started + 1:
                # The device changed before its first step: it started with the old setup.
                for pair in ch["from_setup"].split(","):
                    if "=" in pair:
                        k, v = pair.split("=", 1)
                        if v:
                            start[k] = v
                        else:
                            start.pop(k, None)
        machines.append(Machine(d, lab(start)))
    jobs = []
    for j, s in ran:
        assert s.started is not None and s.ended is not None
        took = max(1, round(s.ended - s.started))
        capable = {
            d: took
            for d, dev in cell.devices.items()
            if s.process in dev.common.processes and (s.target in (None, d))
        }
        capable.setdefault(s.device or "", took)
        prev = j.predecessor(s)
        due = None if j.due is None else max(0, round(j.due - since))
        jobs.append(
            Job(
                id=s.key,
                setup=lab(_needs(s)),
                durations=capable,
                release=max(0, round(j.created - since)),
                due=due,
                weight=1 + max(0, j.priority),
                after=(prev.key,) if prev is not None and prev.key in key_of else (),
            )
        )
    labels = {m.initial_setup for m in machines} | {j.setup for j in jobs}
    times: dict[str, dict[str, dict[str, int]]] = {}
    for m in machines:
        table: dict[str, dict[str, int]] = {}
        for a in labels:
            row: dict[str, int] = {}
            have = parse_label(a)
            for b in labels:
                if a == b:
                    continue
                row[b] = round(configured_s(sched, change_pair(have, parse_label(b))[1]))
            table[a] = row
        times[m.id] = table
    return Problem(
        objective=Objective.WEIGHTED_TARDINESS,
        machines=tuple(machines),
        setup_times=times,
        jobs=tuple(jobs),
        time_unit="s",
    )


def render(report: dict[str, Any]) -> str:
    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")

    minutes = (report["until"] - report["since"]) / 60
    late = report["late"]
    lines = [
        f"shift report: cell {report['cell']}, {when(report['since'])} → "
        f"{when(report['until'])} ({minutes:.0f} min)",
        f"jobs done: {report['jobs_done']}"
        + (
            f" ({late['jobs']} late: {late['minutes']:.1f} min in total, "
            f"at most {late['max_minutes']:.1f} min)"
            if late["jobs"]
            else " (none late)"
        ),
        f"{'device':<12} {'busy min':>9} {'utilisation':>12} {'steps':>6} "
        f"{'changeovers':>12} {'changeover min':>15}",
    ]
    for d, row in sorted(report["devices"].items()):
        lines.append(
            f"{d:<12} {row['busy_s'] / 60:>9.1f} {row['utilisation'] * 100:>11.0f}% "
            f"{row['steps']:>6} {row['changeovers']:>12} {row['changeover_s'] / 60:>15.1f}"
        )
    co = report["changeovers"]
    fifo = report["fifo"]
    if fifo is None:
        lines.append(f"changeovers: {co['count']}, {co['minutes']:.1f} min (no steps ran)")
    else:
        lines.append(
            f"changeover minutes vs FIFO: {co['configured_minutes']:.1f} vs "
            f"{fifo['minutes']:.1f} ({co['count']} vs {fifo['count']} changeovers at the "
            f"configured times; FIFO re-planned on the same {fifo['steps']} steps)"
        )
        lines.append(f"changeover time measured: {co['minutes']:.1f} min")
    return "\n".join(lines)


def dumps(report: dict[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":")).encode()
