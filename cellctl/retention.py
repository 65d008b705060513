"""Retention: the store keeps finished work for a while, not for ever.

Finished jobs (done, failed, cancelled) with their steps and transitions, done
local requests and command audit rows older than `[store] retention_days` are
deleted, and never more than `retention_max_jobs` finished jobs or
`retention_max_audit` audit rows are kept. Open jobs are never touched. It runs
once the job service is ready and then every `retention_interval_s`. SQLite
reuses the freed pages; the file does not shrink (a `cellctl backup` copy is
compact).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from cellctl.config import StoreSection
from cellctl.jobs.records import JobRecord
from cellctl.store import Store, StoreError, transaction

log = structlog.get_logger("cellctl.retention")

_CHUNK = 500  # ids per DELETE … IN (…): far below SQLite's variable limit


class Prunable(Protocol):
    ready: asyncio.Event

    async def prune(self, cutoff: float, keep_max: int) -> int: ...


def finished_to_drop(jobs: Iterable[JobRecord], cutoff: float, keep_max: int) -> list[str]:
    """Ids of finished jobs past retention: older than `cutoff` (last change, Unix
    seconds), or beyond the newest `keep_max` finished ones."""
    done = sorted((j for j in jobs if j.state.terminal), key=lambda j: (j.updated, j.seq))
    excess = max(0, len(done) - keep_max)
    return [j.id for i, j in enumerate(done) if i < excess or j.updated < cutoff]


def delete_jobs(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    with transaction(conn):
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for table in ("transitions", "steps", "jobs"):
                key = "id" if table == "jobs" else "job_id"
                conn.execute(f"DELETE FROM {table} WHERE {key} IN ({marks})", chunk)


def prune_records(conn: sqlite3.Connection, cutoff: float, keep_audit: int) -> int:
    """Delete old audit rows and done local requests; returns how many rows went."""
    with transaction(conn):
        before = conn.total_changes
        conn.execute("DELETE FROM command_audit WHERE ts < ?", (cutoff,))
        conn.execute(
            "DELETE FROM command_audit WHERE id <= (SELECT max(id) FROM command_audit) - ?",
            (keep_audit,),
        )
        conn.execute("DELETE FROM requests WHERE done IS NOT NULL AND done < ?", (cutoff,))
        return conn.total_changes - before


async def prune_once(store: Store, jobs: Prunable, cfg: StoreSection) -> tuple[int, int]:
    """(jobs deleted, other rows deleted)."""
    cutoff = time.time() - cfg.retention_days * 86400
    n_jobs = await jobs.prune(cutoff, cfg.retention_max_jobs)
    n_rows = await store.call(lambda conn: prune_records(conn, cutoff, cfg.retention_max_audit))
    return n_jobs, n_rows


async def run_retention(store: Store, jobs: Prunable, settings: Callable[[], StoreSection]) -> None:
    """The App component: prune at start and then every interval, until cancelled."""
    await jobs.ready.wait()
    while True:
        cfg = settings()
        try:
            n_jobs, n_rows = await prune_once(store, jobs, cfg)
        except StoreError as exc:  # a full disk: deleting needs room in the WAL too
            log.warning("retention could not run; trying again later", error=str(exc))
        else:
            if n_jobs or n_rows:
                log.info("retention: old records deleted", jobs=n_jobs, rows=n_rows)
        await asyncio.sleep(cfg.retention_interval_s)
