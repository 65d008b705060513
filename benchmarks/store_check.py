"""What keeping the store costs, each as a ratio against a baseline measured in the
same run: reading the store's file once, sequentially (the least any check or copy
of it must do).

1. quick_check: `PRAGMA quick_check`, run by every daemon start (docs/jobs.md).
2. integrity_check: the fuller check `cellctl backup` runs on its copy.
3. backup: `cellctl backup` (SQLite's online backup, integrity_check, fsync).

The store is filled with job-like rows (jobs, steps, transitions, audit) up to
`--mb` megabytes. Medians over repetitions; `--quick` for a short run.

    python benchmarks/store_check.py [--quick] [--mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cellctl.cli.backup import backup
from cellctl.store import Store


def build(db: Path, mb: int) -> None:
    async def make() -> None:
        async with Store(db):
            pass

    asyncio.run(make())
    conn = sqlite3.connect(db)
    blob = os.urandom(400)
    n = 0
    while db.stat().st_size < mb * 1_000_000:
        with conn:
            for _ in range(2000):
                job = f"job-{n}"
                conn.execute(
                    "INSERT INTO jobs (id, seq, quantity, priority, source, spec, state,"
                    " created, updated) VALUES (?, ?, 1, 0, 'api', ?, 'done', 0, 0)",
                    (job, n, blob.hex()),
                )
                conn.execute(
                    "INSERT INTO transitions (job_id, to_state, at) VALUES (?, 'done', 0)", (job,)
                )
                conn.execute(
                    "INSERT INTO command_audit (ts, command, origin, payload, outcome)"
                    " VALUES (0, 'submit', '{}', ?, 'accepted')",
                    (blob,),
                )
                n += 1
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def drop_cache_hint(db: Path) -> None:
    # Not a cold cache (that needs root and is not what a restart sees either): every
    # figure reads a file the page cache already holds, the baseline too.
    db.read_bytes()


def timed(fn: Callable[[], object], reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def pragma(db: Path, name: str) -> Callable[[], object]:
    def run() -> object:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(f"PRAGMA {name}").fetchall()
            assert rows == [("ok",)], rows
            return rows
        finally:
            conn.close()

    return run


def read_file(db: Path) -> Callable[[], object]:
    def run() -> object:
        with db.open("rb") as f:
            while f.read(1 << 20):
                pass
        return None

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    mb = 10 if args.quick else args.mb
    reps = 3 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cellctl.db"
        build(db, mb)
        size = db.stat().st_size / 1e6
        drop_cache_hint(db)
        base = timed(read_file(db), reps)
        n = iter(range(1000))

        def copy() -> object:
            dest = Path(tmp) / f"copy-{next(n)}.db"
            size = backup(db, dest)
            dest.unlink()
            return size

        print(f"store {size:.0f} MB; baseline: read the file once {base * 1000:.0f} ms")
        for name, fn in (
            ("quick_check", pragma(db, "quick_check")),
            ("integrity_check", pragma(db, "integrity_check")),
            ("backup", copy),
        ):
            t = timed(fn, reps)
            print(f"{name:<16} {t * 1000:8.0f} ms  {t / base:6.1f}x the baseline")


if __name__ == "__main__":
    main()
