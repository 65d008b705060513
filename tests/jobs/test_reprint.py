"""Reprints (issue 24): the same file again makes a new job `<id>-r<n>` once its job has
ended, through the hot folder, `cellctl submit` and `cellctl reprint`; while it is
unfinished it is the same job; and a SIGKILL between the commit and the delete of a
dropped file leaves one job, even if that job ends before the file is read again."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from jobs.conftest import BOUND, REGISTRY, gcode, make_cell, printer, running, wait_for, wait_job
from jobs.test_cli_jobs import CONFIG, run_cli
from support.daemon import spawn

from cellctl.cli import jobs as cli_jobs
from cellctl.cli.submission import build_submission
from cellctl.config import JobsSection, load
from cellctl.jobs.api import JobNotFound, Repeat
from cellctl.model import JobState
from cellctl.store import DEFAULT_FILE

KILLER = Path(__file__).resolve().parent / "kill_at_unlink.py"
HOT = {"hotfolder": "hot", "hotfolder_settle_s": 0.1, "hotfolder_poll_s": 0.05}


def ids(jobs: list[object]) -> list[str]:
    return [j.id for j in jobs]  # type: ignore[attr-defined]


async def test_the_same_drop_again_is_a_reprint_once_the_job_ended(tmp_path: Path) -> None:
    async with running(make_cell(tmp_path, {"p1": printer()}, HOT)) as app:
        folder = tmp_path / "hot"
        text = gcode(20)
        (folder / "cube.gcode").write_text(text)
        await wait_for(lambda: len(app.jobs._jobs) == 1, "the first drop's job")
        [first] = ids(await app.jobs.list_jobs())
        await wait_job(app, first, JobState.DONE)

        (folder / "cube.gcode").write_text(text)  # dropped again: a reprint
        await wait_for(lambda: len(app.jobs._jobs) == 2, "the reprint")
        assert ids(await app.jobs.list_jobs()) == [first, f"{first}-r1"]
        again = await app.jobs.get(f"{first}-r1")
        assert again.family == first
        accepted = (await app.jobs.transitions(again.id))[0]
        assert accepted["reason"] == f"accepted: a reprint of {first}"
        assert again.steps[0].program_sha256 == (await app.jobs.get(first)).steps[0].program_sha256

        # Dropped while that reprint is unfinished: the same job (held out of service).
        await wait_job(app, f"{first}-r1", JobState.DONE)
        await app.jobs.set_in_service("p1", False)
        (folder / "cube.gcode").write_text(text)
        await wait_for(lambda: len(app.jobs._jobs) == 3, "the second reprint")
        (folder / "cube.gcode").write_text(text)
        await wait_for(lambda: not (folder / "cube.gcode").exists(), "the drop taken")
        assert ids(await app.jobs.list_jobs()) == [first, f"{first}-r1", f"{first}-r2"]
        assert (await app.jobs.get(f"{first}-r2")).state == JobState.QUEUED


async def test_submit_again_and_reprint_make_new_jobs_at_once(tmp_path: Path) -> None:
    async with running(make_cell(tmp_path, {"p1": printer()})) as app:
        await app.jobs.set_in_service("p1", False)  # nothing ends meanwhile
        part = tmp_path / "part.gcode"
        part.write_text(gcode(20))
        spec, files = build_submission(JobsSection(), part)
        first = await app.jobs.submit(spec, files, repeat=Repeat.ENDED)
        assert (await app.jobs.submit(spec, files, repeat=Repeat.ENDED)).id == first.id
        assert (await app.jobs.submit(spec, files, repeat=Repeat.ALWAYS)).id == f"{first.id}-r1"
        assert (await app.jobs.reprint(f"{first.id}-r1")).id == f"{first.id}-r2"
        assert (await app.jobs.submit(spec, files)).id == first.id  # Repeat.SAME: the id's job
        with pytest.raises(JobNotFound):
            await app.jobs.reprint("no-such-job")
        assert len(await app.jobs.list_jobs()) == 3


async def test_cli_submit_again_and_reprint_locally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    part = tmp_path / "part.gcode"
    part.write_text(gcode(20))
    c, wait = str(cfg), str(BOUND)
    async with running(load(cfg, REGISTRY)) as app:
        rc, out, err = await run_cli(capsys, "submit", "-c", c, str(part), "--wait", wait)
        job_id = made(rc, out, err)
        assert job_id.startswith("part-")
        await wait_job(app, job_id, JobState.DONE)
        rc, out, err = await run_cli(capsys, "submit", "-c", c, str(part), "--wait", wait)
        assert made(rc, out, err) == f"{job_id}-r1"
        rc, out, err = await run_cli(
            capsys, "submit", "-c", c, str(part), "--again", "--wait", wait
        )
        assert made(rc, out, err) == f"{job_id}-r2"
        rc, out, err = await run_cli(capsys, "reprint", "-c", c, job_id, "--wait", wait)
        assert made(rc, out, err) == f"{job_id}-r3"
        rc, out, err = await run_cli(capsys, "reprint", "-c", c, "nope", "--wait", wait)
        assert rc == 1 and "no job 'nope'" in err, (out, err)
        for n in (1, 2, 3):
            await wait_job(app, f"{job_id}-r{n}", JobState.DONE)


def made(rc: int, out: str, err: str) -> str:
    """The job a local `submit` or `reprint` says it made (its output: `job ID: done`)."""
    found = re.findall(r"^job (\S+): done$", out, re.MULTILINE)
    assert rc == 0 and len(found) == 1, (out, err)
    return str(found[0])


def _jobs_in(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT id, state FROM jobs ORDER BY seq"))
    finally:
        conn.close()


async def test_sigkill_between_commit_and_delete_is_one_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    cfg.write_text(
        CONFIG.replace("[jobs]\n", '[jobs]\nhotfolder = "hot"\nhotfolder_settle_s = 0.5\n')
    )
    folder = tmp_path / "hot"
    folder.mkdir()
    (folder / "cube.gcode").write_text(gcode(20))
    db = tmp_path / "state" / DEFAULT_FILE
    log = tmp_path / "daemon.log"

    killed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(KILLER), str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    [(job_id, _)] = _jobs_in(db)  # committed …
    assert (folder / "cube.gcode").exists()  # … and the file is still there
    # While the daemon is down an operator cancels the job: at the next start it has
    # ended before the hot folder reads the file again (the folder waits to settle).
    rc, out, err = await run_cli(capsys, "cancel", "-c", str(cfg), job_id, "--local", "--wait", "0")
    assert rc == 0, (out, err)

    proc = spawn(cfg, log)
    try:
        await wait_for(lambda: not (folder / "cube.gcode").exists(), "the file read again", 60)
        await wait_for(lambda: _jobs_in(db) == [(job_id, "cancelled")], "the cancel applied")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    assert _jobs_in(db) == [(job_id, "cancelled")]  # one job, not a reprint
