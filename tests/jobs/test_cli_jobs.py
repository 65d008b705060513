"""`cellctl jobs/submit/answer/cancel/setup/service`: the local forms, against a running
daemon (the real App in this process), through the store's request queue."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from jobs.conftest import REGISTRY, gcode, running, wait_for, wait_job

from cellctl import cli
from cellctl.cli import jobs as cli_jobs
from cellctl.config import load
from cellctl.model import JobState

CONFIG = """\
[cell]
name = "clitest"

[jobs]
dispatch_interval_s = 0.2

[devices.p1]
driver = "jobsim"
backend = "sim"
processes = ["print"]
setup = { material = "PLA", nozzle = "0.4" }
sim = { time_factor = 10.0 }
"""


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


async def test_cli_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI reads the config to find the store; it must know the in-test driver too.
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    # The baseline: its pre-flight holds the PETG file (the planner would ask for PETG).
    cfg.write_text(CONFIG.replace("[jobs]", '[scheduler]\nmethod = "baseline"\n\n[jobs]'))
    part = tmp_path / "part.gcode"
    part.write_text(gcode(30))
    (tmp_path / "petg.gcode").write_text(gcode(10, material="PETG"))
    (tmp_path / "petg.toml").write_text(
        'id = "petg"\n[[route]]\nprocess = "print"\nprogram = "petg.gcode"\n'
    )
    c = str(cfg)
    async with running(load(cfg, REGISTRY)) as app:
        rc, out, err = await run_cli(capsys, "submit", "-c", c, str(part), "--wait", "20")
        assert rc == 0 and ": done" in out, (out, err)
        found = re.search(r"^job (\S+): done$", out, re.MULTILINE)
        assert found, out
        job_id = found.group(1)
        await wait_job(app, job_id, JobState.DONE)
        rc, out, _ = await run_cli(capsys, "jobs", "-c", c)
        assert rc == 0 and job_id in out and "done" in out

        rc, out, err = await run_cli(capsys, "submit", "-c", c, str(tmp_path / "petg.toml"))
        assert rc == 0, err
        held = await wait_job(app, "petg", JobState.HELD)
        assert "PETG" in held.reason
        rc, out, err = await run_cli(capsys, "answer", "-c", c, "petg", "0", "fail", "--wait", "20")
        assert rc == 0, err
        failed = await app.jobs.get("petg")
        assert failed.state == JobState.FAILED and "failed by operator (cli)" in failed.reason

        rc, out, _ = await run_cli(capsys, "jobs", "-c", c, "--job", "petg")
        assert "queued → starting" in out and "held → failed" in out
        rc, out, _ = await run_cli(capsys, "jobs", "-c", c, "--json")
        listed = json.loads(out[out.index("[\n") :])
        assert {j["id"] for j in listed} == {job_id, "petg"}

        rc, _, err = await run_cli(capsys, "answer", "-c", c, "petg", "0", "retry", "--wait", "20")
        assert rc == 1 and "not held" in err
        rc, _, err = await run_cli(capsys, "cancel", "-c", c, "nope", "--wait", "20")
        assert rc == 1 and "no job 'nope'" in err

        rc, _, err = await run_cli(capsys, "setup", "-c", c, "p1", "material=PETG", "--merge")
        assert rc == 0, err
        assert dict((await app.jobs.devices())["p1"].setup) == {
            "material": "PETG",
            "nozzle": "0.4",
        }
        rc, _, err = await run_cli(capsys, "service", "-c", c, "p1", "out", "--note", "cleaning")
        assert rc == 0, err
        assert not (await app.jobs.devices())["p1"].in_service

        rc, _, err = await run_cli(capsys, "submit", "-c", c, str(tmp_path / "missing.gcode"))
        assert rc == 2 and "cannot read" in err


async def test_cancel_queued_while_daemon_is_down_applies_at_next_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG.replace('"print"]', '"print"]\nenabled = false'))
    part = tmp_path / "part.gcode"
    part.write_text(gcode(10))
    c = str(cfg)
    async with running(load(cfg, REGISTRY)) as app:
        spec, _ = cli_jobs.build_submission(load(cfg, REGISTRY).config.jobs, part)
        job = await app.jobs.submit(spec, {"part.gcode": part})
    rc, out, _ = await run_cli(capsys, "cancel", "-c", c, job.id, "--wait", "0")
    assert rc == 0 and "queued" in out
    async with running(load(cfg, REGISTRY)) as app:
        await wait_job(app, job.id, JobState.CANCELLED)


async def test_jobs_without_a_store_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    rc, _, err = await run_cli(capsys, "jobs", "-c", str(cfg))
    assert rc == 1 and "no store yet" in err and "the daemon has not run" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[cell]\n")
    rc, _, err = await run_cli(capsys, "jobs", "-c", str(bad))
    assert rc == 2 and "cell.name: required key is missing" in err


async def test_cli_answers_a_changeover_and_clears_a_bed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`answer --device --setup` records what was loaded; `bed-clear` opens the gate
    (issue 20); the old positional form of `answer` is still required otherwise."""
    monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
    cfg = tmp_path / "cell.toml"
    cfg.write_text(
        CONFIG.replace("[jobs]", '[scheduler]\nmethod = "planner"\nbed_clearing = ["p1"]\n\n[jobs]')
    )
    c = str(cfg)
    part = tmp_path / "petg.gcode"
    part.write_text(gcode(10, material="PETG"))
    async with running(load(cfg, REGISTRY)) as app:
        rc, _, err = await run_cli(capsys, "submit", c, str(part))
        assert rc == 0, err
        await wait_for(lambda: len(app.jobs._jobs) == 1, "the job accepted")
        [job_id] = app.jobs._jobs
        await wait_for(
            lambda: "waiting for a changeover" in app.jobs._jobs[job_id].steps[0].reason,
            "its changeover asked",
        )
        rc, _, err = await run_cli(capsys, "changeover", "-c", c, "p1", "material")
        assert rc == 2 and "KEY=VALUE" in err
        rc, _, err = await run_cli(
            capsys, "changeover", "-c", c, "p1", "material=PETG", "--wait", "20"
        )
        assert rc == 0, err
        assert (await app.jobs.devices())["p1"].setup["material"] == "PETG"
        await wait_job(app, job_id, JobState.DONE)
        assert app.jobs.bed_uncleared("p1")
        rc, _, err = await run_cli(capsys, "bed-clear", c, "p1", "--wait", "20")
        assert rc == 0, err
        assert not app.jobs.bed_uncleared("p1")
        rc, _, err = await run_cli(capsys, "bed-clear", c, "p1", "--wait", "20")
        assert rc == 1 and "not waiting to be cleared" in err
