"""The shift report's figures are what the store holds for the same run: a planner
cell with two printers, mixed materials, a scripted operator answering changeovers
after a fixed time (real App, store, planner; in-test machines at time_factor 10)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import jsonschema
from jobs.conftest import printer, running, wait_job
from jobs.test_planner_live import next_request, planner_cell, print_job

from cellctl import shift_report
from cellctl.jobs.spec import JobSpec
from cellctl.model import JobState

SCHEMA = Path(__file__).resolve().parents[2] / "cellctl" / "schemas" / "payload.report.json"
OPERATOR_S = 0.2


async def test_report_figures_equal_the_store(tmp_path: Path) -> None:
    cell = planner_cell(
        tmp_path,
        {"p1": printer(), "p2": printer(setup={"material": "PETG", "nozzle": "0.4"})},
    )
    mix = ["ABS", "PLA", "ABS", "PETG", "ABS", "PLA", "PETG", "ABS"]
    since = time.time()
    async with running(cell) as app:
        for d in ("p1", "p2"):  # all work in before the first plan
            await app.jobs.set_in_service(d, False, "loading")
        events = app.bus.subscribe("test", lossless=True)
        for i, material in enumerate(mix):
            spec, files = print_job(tmp_path, f"j{i}", material)
            if i == 1:  # one job already late: lateness is counted
                due = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
                spec = JobSpec.model_validate({**spec.model_dump(), "due": due.isoformat()})
            await app.jobs.submit(spec, files)
        for d in ("p1", "p2"):
            await app.jobs.set_in_service(d, True)

        async def operator() -> None:
            while True:
                req = await next_request(events)
                if req.details["withdrawn"] or req.details["updated"]:
                    continue
                await asyncio.sleep(OPERATOR_S)
                await app.jobs.set_setup(req.device_id, req.details["load"], merge=True)

        async with asyncio.TaskGroup() as tg:
            op = tg.create_task(operator())
            for i in range(len(mix)):
                job = await wait_job(app, f"j{i}", JobState.DONE, JobState.FAILED, JobState.HELD)
                assert job.state == JobState.DONE, job.reason
            op.cancel()
    until = time.time()
    db = tmp_path / "state" / "cellctl.db"
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        report = shift_report.build(conn, cell, since, until)
        steps = conn.execute(
            "SELECT device, COUNT(*), SUM(ended - started) FROM steps WHERE state = 'done' "
            "GROUP BY device"
        ).fetchall()
        changes = conn.execute(
            "SELECT device, COUNT(*), SUM(seconds) FROM measured WHERE kind = 'changeover' "
            "GROUP BY device"
        ).fetchall()
        done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
        late = conn.execute(
            "SELECT j.id, t.at - j.due FROM jobs j JOIN transitions t ON t.job_id = j.id "
            "WHERE t.idx IS NULL AND t.to_state = 'done' AND j.due IS NOT NULL AND t.at > j.due"
        ).fetchall()
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["jobs_done"] == done == len(mix)
    for device, n, busy in steps:
        row = report["devices"][device]
        assert row["steps"] == n
        assert abs(row["busy_s"] - busy) < 1e-3
        assert abs(row["utilisation"] - busy / (until - since)) < 1e-3
    assert sum(r["steps"] for r in report["devices"].values()) == len(mix)
    assert changes, "the mix needs changeovers"
    for device, n, seconds in changes:
        assert report["devices"][device]["changeovers"] == n
        assert abs(report["devices"][device]["changeover_s"] - seconds) < 1e-3
    assert report["changeovers"]["count"] == sum(n for _, n, _ in changes)
    total_min = sum(s for _, _, s in changes) / 60
    assert abs(report["changeovers"]["minutes"] - total_min) < 0.01
    assert [j for j, _ in late] == ["j1"] and report["late"]["jobs"] == 1
    assert abs(report["late"]["minutes"] - late[0][1] / 60) < 0.01
    # Priced at the configured times (material: 600 s), like FIFO's figure.
    assert report["changeovers"]["configured_minutes"] == 10.0 * report["changeovers"]["count"]
    fifo = report["fifo"]
    assert fifo is not None and fifo["steps"] == len(mix)
    assert fifo["count"] > report["changeovers"]["count"]  # first come needs more here
    assert fifo["minutes"] == 10.0 * fifo["count"]
    text = shift_report.render(report)
    assert "changeover minutes vs FIFO:" in text and "jobs done: 8 (1 late" in text, text
