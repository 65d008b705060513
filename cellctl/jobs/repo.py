"""SQL for jobs, steps, transitions, device setups and local requests.

Plain functions of a `sqlite3.Connection`, run on the store's thread
(`Store.call`). Writers expect to be called inside `transaction(conn)`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cellctl.jobs.gcode import GcodeInfo
from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.model import JobState, ProgramKind, StepState


def _step_from_row(r: sqlite3.Row) -> StepRecord:
    return StepRecord(
        job_id=r["job_id"],
        index=r["idx"],
        unit=r["unit"],
        position=r["position"],
        process=r["process"],
        program_kind=ProgramKind(r["program_kind"]),
        program_sha256=r["program_sha256"],
        program_file=r["program_file"],
        program_name=r["program_name"],
        program_parameters=json.loads(r["program_parameters"]),
        gcode=GcodeInfo.from_json(json.loads(r["gcode"])) if r["gcode"] else None,
        setup=json.loads(r["setup"]),
        reserves=tuple(json.loads(r["reserves"])),
        estimated_s=r["estimated_s"],
        state=StepState(r["state"]),
        reason=r["reason"],
        device=r["device"],
        reserved=tuple(json.loads(r["reserved"])),
        pinned=r["pinned"],
        target=r["target"],
        attempt=r["attempt"],
        start_line=r["start_line"],
        last_acked_line=r["last_acked_line"],
        ran_sha256=r["ran_sha256"],
        started=r["started"],
        ended=r["ended"],
    )


def load_jobs(
    conn: sqlite3.Connection, only_open: bool = False, job_id: str | None = None
) -> list[JobRecord]:
    conds, args = [], []
    if only_open:
        conds.append("j.state NOT IN ('done', 'failed', 'cancelled')")
    if job_id is not None:
        conds.append("j.id = ?")
        args.append(job_id)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    jobs = conn.execute(f"SELECT j.* FROM jobs j {where} ORDER BY j.seq", args).fetchall()
    steps: dict[str, list[StepRecord]] = {}
    rows = conn.execute(
        f"SELECT s.* FROM steps s JOIN jobs j ON j.id = s.job_id {where} ORDER BY s.job_id, s.idx",
        args,
    )
    for r in rows:
        steps.setdefault(r["job_id"], []).append(_step_from_row(r))
    return [
        JobRecord(
            id=j["id"],
            seq=j["seq"],
            quantity=j["quantity"],
            priority=j["priority"],
            due=j["due"],
            source=j["source"],
            state=JobState(j["state"]),
            reason=j["reason"],
            created=j["created"],
            updated=j["updated"],
            steps=tuple(steps.get(j["id"], [])),
            cancel_requested=bool(j["cancel_requested"]),
            spec=j["spec"],
            family=j["family"],
            drop=j["drop_sig"],
        )
        for j in jobs
    ]


def load_job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    found = load_jobs(conn, job_id=job_id)
    return found[0] if found else None


def next_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0])


def insert_job(conn: sqlite3.Connection, job: JobRecord, spec_json: str) -> None:
    conn.execute(
        "INSERT INTO jobs (id, seq, quantity, priority, due, source, spec, state, reason,"
        " cancel_requested, created, updated, family, drop_sig)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            job.id,
            job.seq,
            job.quantity,
            job.priority,
            job.due,
            job.source,
            spec_json,
            job.state.value,
            job.reason,
            int(job.cancel_requested),
            job.created,
            job.updated,
            job.family,
            job.drop,
        ),
    )
    for s in job.steps:
        conn.execute(
            "INSERT INTO steps (job_id, idx, unit, position, process, program_kind,"
            " program_sha256, program_file, program_name, program_parameters, gcode, setup,"
            " reserves, estimated_s, state, reason, target)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                s.job_id,
                s.index,
                s.unit,
                s.position,
                s.process,
                s.program_kind.value,
                s.program_sha256,
                s.program_file,
                s.program_name,
                json.dumps(dict(s.program_parameters)),
                json.dumps(s.gcode.to_json()) if s.gcode else None,
                json.dumps(dict(s.setup)),
                json.dumps(list(s.reserves)),
                s.estimated_s,
                s.state.value,
                s.reason,
                s.target,
            ),
        )
    add_transition(conn, job.id, None, None, job.state.value, None, job.reason, job.created)


def add_transition(
    conn: sqlite3.Connection,
    job_id: str,
    index: int | None,
    from_state: str | None,
    to_state: str,
    device: str | None,
    reason: str,
    at: float,
) -> None:
    conn.execute(
        "INSERT INTO transitions (job_id, idx, from_state, to_state, device, reason, at)"
        " VALUES (?,?,?,?,?,?,?)",
        (job_id, index, from_state, to_state, device, reason, at),
    )


def update_step(conn: sqlite3.Connection, s: StepRecord) -> None:
    conn.execute(
        "UPDATE steps SET state=?, reason=?, device=?, reserved=?, pinned=?, attempt=?,"
        " start_line=?, last_acked_line=?, ran_sha256=?, started=?, ended=?"
        " WHERE job_id=? AND idx=?",
        (
            s.state.value,
            s.reason,
            s.device,
            json.dumps(list(s.reserved)),
            s.pinned,
            s.attempt,
            s.start_line,
            s.last_acked_line,
            s.ran_sha256,
            s.started,
            s.ended,
            s.job_id,
            s.index,
        ),
    )


def update_job(conn: sqlite3.Connection, job: JobRecord) -> None:
    conn.execute(
        "UPDATE jobs SET state=?, reason=?, cancel_requested=?, updated=? WHERE id=?",
        (job.state.value, job.reason, int(job.cancel_requested), job.updated, job.id),
    )


def set_priority(conn: sqlite3.Connection, job_id: str, priority: int, at: float) -> None:
    conn.execute("UPDATE jobs SET priority=?, updated=? WHERE id=?", (priority, at, job_id))


def save_acked_lines(conn: sqlite3.Connection, lines: Iterable[tuple[str, int, int]]) -> None:
    conn.executemany(
        "UPDATE steps SET last_acked_line=? WHERE job_id=? AND idx=? AND state='running'",
        [(line, job, idx) for job, idx, line in lines],
    )


def transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT idx, from_state, to_state, device, reason, at FROM transitions"
        " WHERE job_id=? ORDER BY id",
        (job_id,),
    )
    return [dict(r) for r in rows]


# --- devices ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    id: str
    setup: Mapping[str, str]
    in_service: bool
    note: str


def ensure_devices(conn: sqlite3.Connection, initial: Mapping[str, Mapping[str, str]]) -> None:
    """First start of a device: its setup comes from config. Later starts keep the stored one."""
    now = time.time()
    for dev_id, setup in initial.items():
        conn.execute(
            "INSERT OR IGNORE INTO devices (id, setup, in_service, updated) VALUES (?,?,1,?)",
            (dev_id, json.dumps(dict(setup)), now),
        )


def load_devices(conn: sqlite3.Connection) -> dict[str, DeviceRow]:
    return {
        r["id"]: DeviceRow(r["id"], json.loads(r["setup"]), bool(r["in_service"]), r["note"])
        for r in conn.execute("SELECT * FROM devices")
    }


def save_device(conn: sqlite3.Connection, row: DeviceRow) -> None:
    conn.execute(
        "INSERT INTO devices (id, setup, in_service, note, updated) VALUES (?,?,?,?,?)"
        " ON CONFLICT(id) DO UPDATE SET setup=excluded.setup, in_service=excluded.in_service,"
        " note=excluded.note, updated=excluded.updated",
        (row.id, json.dumps(dict(row.setup)), int(row.in_service), row.note, time.time()),
    )


# --- local requests (the CLI writes, the daemon applies) --------------------


def add_request(conn: sqlite3.Connection, kind: str, payload: Mapping[str, Any]) -> int:
    cur = conn.execute(
        "INSERT INTO requests (kind, payload, created) VALUES (?,?,?)",
        (kind, json.dumps(dict(payload)), time.time()),
    )
    return int(cur.lastrowid or 0)


def pending_requests(conn: sqlite3.Connection) -> list[tuple[int, str, dict[str, Any]]]:
    rows = conn.execute("SELECT id, kind, payload FROM requests WHERE done IS NULL ORDER BY id")
    return [(r["id"], r["kind"], json.loads(r["payload"])) for r in rows]


def finish_request(
    conn: sqlite3.Connection, request_id: int, error: str | None, result: str | None = None
) -> None:
    conn.execute(
        "UPDATE requests SET done=?, error=?, result=? WHERE id=?",
        (time.time(), error, result, request_id),
    )


def request_result(
    conn: sqlite3.Connection, request_id: int
) -> tuple[bool, str | None, str | None]:
    """(done, error, result) of a queued request."""
    r = conn.execute(
        "SELECT done, error, result FROM requests WHERE id=?", (request_id,)
    ).fetchone()
    if r is None:
        return (True, "no such request", None)
    return (r["done"] is not None, r["error"], r["result"])
