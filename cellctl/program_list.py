"""The cell's program store as a list: what the `programs` query answers.

The store's files (`<state_dir>/programs/<sha256>`, cellctl.jobs.programs) are
the truth; a program's name comes from its upload (`program_names`, written
when a `put_program` completes) or else from the newest job that ran it, with
that job's id and the setup its G-code asks for. Newest first; the cursor of a
page is `<stored ns>-<sha256>` of its last program, so that a program stored
meanwhile never shifts a page being read.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellctl.errors import CellError
from cellctl.jobs.gcode import GcodeInfo
from cellctl.store import transaction

SHA = re.compile(r"^[0-9a-f]{64}$")
CURSOR = re.compile(r"^(\d{1,20})-([0-9a-f]{64})$")


@dataclass(frozen=True)
class Stored:
    sha256: str
    size: int
    stored_ns: int


def scan(root: Path) -> list[Stored]:
    """Every stored program, newest first (blocking: call it off the loop)."""
    out = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for e in entries:
        if not SHA.match(e.name):
            continue  # `.incoming-*` and anything else that is not a stored program
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        out.append(Stored(e.name, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda s: (-s.stored_ns, s.sha256))
    return out


def cursor(row: dict[str, Any]) -> str:
    return f"{row['stored_ns']}-{row['sha256']}"


def after(stored: list[Stored], token: str | None) -> list[Stored]:
    """The programs that follow the cursor `token` (None: from the newest)."""
    if token is None:
        return stored
    m = CURSOR.match(token)
    if m is None:
        raise CellError(f"after: expected the cursor a page gave (<ns>-<sha256>), got {token!r}")
    key = (-int(m.group(1)), m.group(2))
    return [s for s in stored if (-s.stored_ns, s.sha256) > key]


def describe(conn: sqlite3.Connection, page: list[Stored]) -> list[dict[str, Any]]:
    """The page's programs with their names, last job and the setup their G-code asks for."""
    if not page:
        return []
    shas = [s.sha256 for s in page]
    marks = ",".join("?" * len(shas))
    named = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            f"SELECT sha256, name, user FROM program_names WHERE sha256 IN ({marks})", shas
        )
    }
    used: dict[str, tuple[str, str, str | None]] = {}
    rows = conn.execute(
        "SELECT s.program_sha256, s.program_file, s.job_id, s.gcode FROM steps s"
        f" JOIN jobs j ON j.id = s.job_id WHERE s.program_sha256 IN ({marks})"
        " ORDER BY j.seq DESC, s.idx",
        shas,
    )
    for sha, file, job, gcode in rows:
        used.setdefault(sha, (file, job, gcode))
    out = []
    for s in page:
        name, user = named.get(s.sha256, ("", ""))
        file, job, gcode = used.get(s.sha256, ("", None, None))
        if not name and not file.startswith("sha256:"):
            name = file
        requirements: dict[str, str] = {}
        if gcode:
            requirements = GcodeInfo.from_json(json.loads(gcode)).requirements()
        out.append(
            {
                "sha256": s.sha256,
                "program": f"sha256:{s.sha256}",
                "name": name,
                "size": s.size,
                "stored": s.stored_ns / 1e9,
                "stored_ns": s.stored_ns,
                "uploaded_by": user or None,
                "last_job": job,
                "setup": requirements,
            }
        )
    return out


def name(conn: sqlite3.Connection, sha256: str, label: str, user: str) -> None:
    """Record the name a program was uploaded under (the latest one wins)."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO program_names (sha256, name, user, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(sha256) DO UPDATE SET name = excluded.name, user = excluded.user,"
            " ts = excluded.ts",
            (sha256, label[:256], user, time.time()),
        )
