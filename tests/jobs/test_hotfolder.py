"""The hot folder: torn files are never read half, bad files land in rejected/ with
their reason, the same file twice is one job, and dropped jobs run to completion."""

from __future__ import annotations

import os
from pathlib import Path

from jobs.conftest import gcode, make_cell, printer, robot, running, wait_job

from cellctl.app import App
from cellctl.config import JobsSection
from cellctl.hotfolder import HotFolder
from cellctl.model import JobState

JOB_TOML = """\
id = "bracket"
quantity = 2
priority = 3

[[route]]
process = "print"
program = "parts/bracket.gcode"
setup = { nozzle = 0.4 }

[[route]]
process = "tend"
program = { kind = "robot", name = "unload" }
reserves = ["@previous"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def folder_for(app: App, tmp_path: Path, **settings: float) -> tuple[HotFolder, Clock]:
    clock = Clock()
    section = JobsSection(**{"hotfolder_settle_s": 1.0, "hotfolder_missing_s": 5.0, **settings})
    hot = HotFolder(tmp_path / "hot", app.jobs, lambda: section, clock)
    hot.folder.mkdir()
    return hot, clock


def cell_for(tmp_path: Path) -> object:
    return make_cell(tmp_path, {"p1": printer(), "arm": robot()}, {"dispatch_interval_s": 0.2})


async def test_torn_job_file_is_never_read_half(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path)
        (hot.folder / "parts").mkdir()
        # Hand-written: no slicer end marker to say it is complete, so it must settle.
        (hot.folder / "parts" / "bracket.gcode").write_text("G28\n" + "G1 X10 Y10\n" * 20)
        job_file = hot.folder / "bracket.toml"
        half = len(JOB_TOML) // 2
        job_file.write_text(JOB_TOML[:half])  # the writer is still busy
        for t in (0.0, 0.5, 0.9):
            clock.now = t
            assert await hot.scan_once() == []
        with job_file.open("a") as f:  # the rest arrives just before the settle time
            f.write(JOB_TOML[half:])
        os.utime(job_file, ns=(1, 1))  # even a writer that resets mtime changes the size
        for t in (1.0, 1.5, 1.9):
            clock.now = t
            assert await hot.scan_once() == []
        clock.now = 2.1
        # The job file has settled; its program in a sub-folder is watched from now on.
        assert await hot.scan_once() == []
        clock.now = 3.2
        [outcome] = await hot.scan_once()
        assert outcome.accepted == "bracket", outcome
        job = await app.jobs.get("bracket")
        assert job.quantity == 2 and len(job.steps) == 4 and job.priority == 3
        assert not job_file.exists() and not (hot.folder / "parts" / "bracket.gcode").exists()
        assert not hot.rejected.exists()
        done = await wait_job(app, "bracket", JobState.DONE, JobState.FAILED, JobState.HELD)
        assert done.state == JobState.DONE, done.reason


async def test_write_then_rename_and_temp_names_are_ignored(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        tmp = hot.folder / ".part.gcode.tmp"
        tmp.write_text(gcode(10)[:50])
        (hot.folder / "part.gcode.part").write_text("G1 X")
        clock.now = 100.0
        assert await hot.scan_once() == []
        tmp.write_text(gcode(10))
        tmp.rename(hot.folder / "part.gcode")
        [outcome] = await hot.scan_once()
        assert outcome.accepted is not None and outcome.accepted.startswith("part-")
        job = await app.jobs.get(outcome.accepted)
        # A bare G-code file asks for what its slicer metadata says.
        assert dict(job.steps[0].setup) == {"material": "PLA", "nozzle": "0.4"}
        assert job.steps[0].estimated_s == 90.0


async def test_bare_cnc_program_asks_for_milling(tmp_path: Path) -> None:
    mill = {**printer(setup={}), "processes": ["mill"]}
    cell = make_cell(tmp_path, {"p1": printer(), "m1": mill}, {"dispatch_interval_s": 0.2})
    async with running(cell) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        (hot.folder / "bracket.nc").write_text("G21\nG90\nG0 X10 Y10\nG1 X20 F500\nM5\n")
        (hot.folder / "part.gcode").write_text(gcode(10))
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        processes = {}
        for name, outcome in outcomes.items():
            assert outcome.accepted is not None, outcome
            job = await app.jobs.get(outcome.accepted)
            processes[name] = job.steps[0].process
        assert processes == {"bracket.nc": "mill", "part.gcode": "print"}


async def test_bad_files_go_to_rejected_with_the_reason(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        drops = {
            "syntax.toml": 'id = "x"\n[[route]\n',
            "unknown-key.toml": 'id = "y"\ncolour = "red"\n[[route]]\nprocess = "print"\n',
            "mill.toml": 'id = "z"\n[[route]]\nprocess = "mill"\n',
            "missing.toml": 'id = "w"\n[[route]]\nprocess = "print"\nprogram = "nope.gcode"\n',
            "escape.toml": 'id = "v"\n[[route]]\nprocess = "print"\nprogram = "../x.gcode"\n',
            "binary.toml": "",
        }
        for name, text in drops.items():
            (hot.folder / name).write_text(text)
        (hot.folder / "binary.toml").write_bytes(b"id = \xff\xfe")
        clock.now = 1.0
        first = {o.name: o for o in await hot.scan_once()}
        assert "missing.toml" not in first  # its program may still be coming
        clock.now = 10.0
        later = {o.name: o for o in await hot.scan_once()}
        outcomes = {**first, **later}
        assert set(outcomes) == set(drops)
        assert all(o.rejected and not o.accepted for o in outcomes.values())
        errors = {n: (hot.rejected / (n + ".error")).read_text() for n in drops}
        assert "TOML syntax error" in errors["syntax.toml"]
        assert "colour: Extra inputs are not permitted" in errors["unknown-key.toml"]
        assert "no device in the cell can do process 'mill'" in errors["mill.toml"]
        assert "not found beside the job file: nope.gcode" in errors["missing.toml"]
        assert "relative path inside the hot folder" in errors["escape.toml"]
        assert "not UTF-8" in errors["binary.toml"]
        for name in drops:
            assert (hot.rejected / name).is_file() and not (hot.folder / name).exists()
        assert await app.jobs.list_jobs() == []


async def test_same_file_twice_is_one_job_even_after_a_crash_before_delete(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        text = gcode(15)
        (hot.folder / "cube.gcode").write_text(text)
        clock.now = 1.0
        [a] = await hot.scan_once()
        # As if the daemon died after the commit but before deleting the file:
        (hot.folder / "cube.gcode").write_text(text)
        clock.now = 2.0
        [b] = await hot.scan_once()
        assert a.accepted == b.accepted and a.accepted is not None
        assert len(await app.jobs.list_jobs()) == 1
        assert not (hot.folder / "cube.gcode").exists()


async def test_program_named_by_a_job_file_is_not_taken_as_a_bare_job(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path)
        (hot.folder / "plate.gcode").write_text(gcode(10))
        job = 'id = "plate-job"\n[[route]]\nprocess = "print"\nprogram = "plate.gcode"\n'
        (hot.folder / "plate.toml").write_text(job[:20])  # a job file still being written
        for t in (0.0, 0.5, 0.9, 1.5, 2.0):
            clock.now = t
            assert await hot.scan_once() == []  # the G-code waits: the job file may name it
            if t == 0.9:
                (hot.folder / "plate.toml").write_text(job)
        clock.now = 2.6
        [outcome] = await hot.scan_once()
        assert outcome.accepted == "plate-job"
        assert [j.id for j in await app.jobs.list_jobs()] == ["plate-job"]


async def test_daemon_with_a_hot_folder_runs_dropped_jobs(tmp_path: Path) -> None:
    cell = make_cell(
        tmp_path,
        {"p1": printer(), "arm": robot()},
        {"hotfolder": "hot", "hotfolder_settle_s": 0.1, "hotfolder_poll_s": 0.05},
    )
    async with running(cell) as app:
        folder = tmp_path / "hot"
        tmp = folder / ".drop.tmp"
        tmp.write_text(gcode(30))
        tmp.rename(folder / "cube.gcode")
        (folder / "parts").mkdir()
        (folder / "parts" / "bracket.gcode").write_text(gcode(20))
        tmp.write_text(JOB_TOML)
        tmp.rename(folder / "bracket.toml")
        (folder / "junk.toml").write_text("this is not toml")
        await wait_job(app, "bracket", JobState.DONE)
        jobs = {j.id: j for j in await app.jobs.list_jobs()}
        cube = next(j for j in jobs if j.startswith("cube-"))
        await wait_job(app, cube, JobState.DONE)
        assert (folder / "rejected" / "junk.toml.error").read_text().startswith("junk.toml")


async def test_gcode_cut_short_waits_then_is_rejected(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:  # type: ignore[arg-type]
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        text = gcode(40)
        cut = text[: text.index("; prusaslicer_config = end")]
        stalled, lost = hot.folder / "stalled.gcode", hot.folder / "lost.gcode"
        stalled.write_text(cut)  # a copy that stalls longer than the settle time …
        lost.write_text(cut)  # … and one that never completes
        for t in (0.0, 1.0, 4.0):
            clock.now = t
            assert await hot.scan_once() == []
        stalled.write_text(text)
        clock.now = 4.5
        [ok] = await hot.scan_once()
        assert ok.name == "stalled.gcode" and ok.accepted
        clock.now = 5.5  # past hotfolder_missing_s
        [bad] = await hot.scan_once()
        assert bad.name == "lost.gcode" and bad.rejected and "looks cut short" in bad.rejected
        assert "prusaslicer_config = end" in (hot.rejected / "lost.gcode.error").read_text()
