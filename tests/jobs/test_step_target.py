"""A step sent to one device (`device`, the panel's /device/<id>/ URL) runs only there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from jobs.conftest import gcode, make_cell, printer, robot, running, wait_job

from cellctl.jobs.spec import JobRejected, JobSpec
from cellctl.model import JobState


def job(job_id: str, device: str | None = None, process: str = "print") -> JobSpec:
    step = {"process": process, "program": "part.gcode", "device": device}
    return JobSpec.model_validate({"id": job_id, "route": [step]})


async def test_a_targeted_step_waits_for_its_device(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, {"p1": printer(), "p2": printer(), "arm": robot()})
    part = tmp_path / "part.gcode"
    part.write_text(gcode(30))
    async with running(cell) as app:
        for n in range(3):  # p1 stays free all along: only p2 may take them
            await app.jobs.submit(job(f"t{n}", "p2"), {"part.gcode": part})
        for n in range(3):
            done = await wait_job(app, f"t{n}", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
            assert done.steps[0].device == "p2" and done.steps[0].target == "p2"
            assert done.as_dict()["steps"][0]["target"] == "p2"
        with pytest.raises(JobRejected, match="device 'arm' cannot do process 'print'"):
            await app.jobs.submit(job("bad", "arm"), {"part.gcode": part})
        with pytest.raises(JobRejected, match="no device 'p9' in the cell"):
            await app.jobs.submit(job("bad", "p9"), {"part.gcode": part})
    conn = sqlite3.connect(cell.state_dir / "cellctl.db")
    assert conn.execute("SELECT DISTINCT target FROM steps").fetchall() == [("p2",)]
