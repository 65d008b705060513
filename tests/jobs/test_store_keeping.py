"""Keeping the store: a consistent backup while jobs arrive, and retention bounds what
finished work leaves behind (issue 17)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from jobs.conftest import gcode, make_cell, printer, running, wait_for, wait_job
from support.smalldisk import fill, rerun_in_userns, small_disk

from cellctl.cli import main
from cellctl.cli.backup import backup
from cellctl.config import JobsSection, StoreSection
from cellctl.errors import CellError, UsageError
from cellctl.hotfolder import HotFolder
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState
from cellctl.retention import prune_once
from cellctl.store import DEFAULT_FILE


def print_job(job_id: str) -> JobSpec:
    return JobSpec.model_validate(
        {"id": job_id, "route": [{"process": "print", "program": "part.gcode"}]}
    )


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def test_backup_while_jobs_are_submitted_is_whole_and_sound(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer(sim={"time_factor": 50.0, "line_s": 0.001})})
    part = tmp_path / "part.gcode"
    part.write_text(gcode(20))
    copies = [tmp_path / f"copy-{i}.db" for i in range(4)]
    async with running(cell) as app:
        stop = asyncio.Event()
        submitted = 0

        async def submit_all() -> None:
            nonlocal submitted
            while not stop.is_set():
                await app.jobs.submit(print_job(f"j{submitted}"), {"part.gcode": part})
                submitted += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(submit_all())
            await wait_for(lambda: submitted >= 5, "the first jobs")
            for copy in copies:
                await asyncio.to_thread(backup, app.store.path, copy)
                await wait_for(lambda n=submitted: submitted > n, "more jobs between copies")
            stop.set()
    counts = []
    for copy in copies:
        assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
        # Whole jobs only: every job in the copy has its step and its first transition.
        jobs = rows(copy, "SELECT count(*) FROM jobs")[0][0]
        steps = rows(copy, "SELECT count(*) FROM steps")[0][0]
        accepted = rows(
            copy, "SELECT count(*) FROM transitions WHERE from_state IS NULL AND idx IS NULL"
        )
        assert isinstance(jobs, int) and jobs >= 5 and steps == jobs, (jobs, steps)
        assert accepted[0][0] == jobs  # committed with its job, in the same transaction
        counts.append(jobs)
    assert counts == sorted(counts) and counts[-1] < submitted


def test_backup_refuses_to_overwrite_and_names_a_missing_store(tmp_path: Path) -> None:
    existing = tmp_path / "there.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="never overwrites"):
        backup(tmp_path / "cellctl.db", existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(CellError, match="no store at"):
        backup(tmp_path / "nothing.db", tmp_path / "copy.db")
    assert not (tmp_path / "nothing.db").exists()  # never created by looking


def test_cellctl_backup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text('[cell]\nname = "b1"\nstate_dir = "state"\n')
    db = tmp_path / "state" / DEFAULT_FILE
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()  # left open: its WAL holds the row, the copy must too
    try:
        assert main(["backup", str(cfg), str(tmp_path / "b.db")]) == 0
        assert "integrity_check ok" in capsys.readouterr().out
        assert rows(tmp_path / "b.db", "SELECT x FROM t") == [(1,)]
        assert main(["backup", str(cfg), str(tmp_path / "b.db")]) == 2
        assert "never overwrites" in capsys.readouterr().err
    finally:
        conn.close()


async def test_retention_bounds_finished_jobs_and_audit_rows(tmp_path: Path) -> None:
    # The running component's own age limit is far off: the 40-day-old audit row below is
    # for the explicit prune to delete (the component's 0.1 s pass took it first, once).
    store = {"retention_max_jobs": 2, "retention_interval_s": 0.1, "retention_days": 3650}
    cell = make_cell(tmp_path, {"p1": printer()}, store=store)
    part = tmp_path / "part.gcode"
    part.write_text(gcode(10))
    async with running(cell) as app:
        db = app.store.path
        for i in range(4):
            await app.jobs.submit(print_job(f"j{i}"), {"part.gcode": part})
            await wait_job(app, f"j{i}", JobState.DONE)
        # The component keeps the newest two finished jobs, with their history.
        await wait_for(lambda: sorted(app.jobs._jobs) == ["j2", "j3"], "retention ran")
        left = rows(db, "SELECT DISTINCT job_id FROM transitions ORDER BY job_id")
        assert left == [("j2",), ("j3",)]
        assert rows(db, "SELECT DISTINCT job_id FROM steps ORDER BY job_id") == left

        old = time.time() - 40 * 86400
        conn = sqlite3.connect(db)
        with conn:
            conn.executemany(
                "INSERT INTO command_audit (ts, command, origin, outcome) VALUES (?, ?, '{}', ?)",
                [(old, "pause", "accepted"), (time.time(), "stop", "accepted")],
            )
        conn.close()
        # An open job is never touched, however old the limit says it is.
        await app.jobs.set_in_service("p1", False)  # nothing dispatches from here on
        await app.jobs.submit(print_job("open"), {"part.gcode": part})
        cfg = StoreSection(retention_days=30, retention_max_jobs=1)
        n_jobs, n_rows = await prune_once(app.store, app.jobs, cfg)
        assert (n_jobs, n_rows) == (1, 1)
        assert sorted(app.jobs._jobs) == ["j3", "open"]
        assert rows(db, "SELECT command FROM command_audit") == [("stop",)]
        cfg = StoreSection(retention_days=1e-9)
        await prune_once(app.store, app.jobs, cfg)
        assert sorted(app.jobs._jobs) == ["open"]
        assert rows(db, "SELECT id FROM jobs") == [("open",)]


async def test_hot_folder_file_waits_for_disk_space_and_is_not_rejected(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if rerun_in_userns(request, tmp_path):
        return
    cell = make_cell(tmp_path, {"p1": printer()}, store={"min_free_mb": 2})
    with small_disk(tmp_path / "state", 8) as state:
        async with running(cell) as app:
            filler = fill(state)
            section = JobsSection(hotfolder_settle_s=0.0)
            hot = HotFolder(tmp_path / "hot", app.jobs, lambda: section, lambda: 100.0)
            hot.folder.mkdir()
            (hot.folder / "part.gcode").write_text(gcode(10))
            for _ in range(3):
                assert await hot.scan_once() == []
            assert (hot.folder / "part.gcode").exists() and not hot.rejected.exists()
            filler.unlink()
            [outcome] = await hot.scan_once()
            assert outcome.accepted is not None, outcome
            assert not (hot.folder / "part.gcode").exists()
