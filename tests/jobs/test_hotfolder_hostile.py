"""The hot folder against a careless or hostile user (issue 16): links, swapped files,
a `rejected` that points elsewhere, hard links, FIFOs. Each test first shows the harm
the drop was built for (the outside file the path reaches, the live database a move
would overwrite), then that the hot folder refuses it and the outside file is intact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from jobs.conftest import gcode, make_cell, printer, robot, running
from jobs.test_hotfolder import folder_for

from cellctl.config import Cell
from cellctl.jobs.spec import safe_program_path
from cellctl.safefs import Folder, Identity

JOB = 'id = "{id}"\n[[route]]\nprocess = "print"\nprogram = "{program}"\n'


def cell_for(tmp_path: Path) -> Cell:
    return make_cell(tmp_path, {"p1": printer(), "arm": robot()}, {"dispatch_interval_s": 0.2})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_linked_folder_cannot_reach_the_live_database(tmp_path: Path) -> None:
    cell = cell_for(tmp_path)
    async with running(cell) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        db = cell.state_dir / "cellctl.db"
        before = db.stat().st_size
        (hot.folder / "st").symlink_to(cell.state_dir)
        (hot.folder / "steal.toml").write_text(JOB.format(id="steal", program="st/cellctl.db"))
        # The harm: the name the job gives passes the old path check and is the live
        # database; the hot folder deletes every program it read.
        named = safe_program_path(hot.folder, "st/cellctl.db")
        assert named.resolve() == db.resolve() and named.read_bytes()[:15] == b"SQLite format 3"
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert outcomes["steal.toml"].rejected is not None
        assert "not a G-code file" in outcomes["steal.toml"].rejected
        assert "a symbolic link" in (outcomes["st"].rejected or "")
        assert db.exists() and db.stat().st_size >= before
        assert (hot.rejected / "st").is_symlink()  # the link itself moved, nothing behind it
        assert await app.jobs.list_jobs() == []


async def test_linked_folder_cannot_reach_gcode_outside(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        outside = tmp_path / "outside"
        outside.mkdir()
        secret = outside / "secret.gcode"
        secret.write_text(gcode(5))
        (hot.folder / "parts").mkdir()
        (hot.folder / "parts" / "out").symlink_to(outside)
        (hot.folder / "parts" / "p.gcode").symlink_to(secret)
        (hot.folder / "a.toml").write_text(JOB.format(id="a", program="parts/out/secret.gcode"))
        (hot.folder / "b.toml").write_text(JOB.format(id="b", program="parts/p.gcode"))
        # The harm: both names reach the file outside the folder.
        assert (hot.folder / "parts/out/secret.gcode").read_text() == secret.read_text()
        assert (hot.folder / "parts/p.gcode").read_text() == secret.read_text()
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert "'out' is a symbolic link, not a folder" in (outcomes["a.toml"].rejected or "")
        assert "is a symbolic link" in (outcomes["b.toml"].rejected or "")
        assert secret.read_text() == gcode(5)
        assert await app.jobs.list_jobs() == []


async def test_file_link_is_not_a_job(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        outside = tmp_path / "elsewhere.gcode"
        outside.write_text(gcode(5))
        link = hot.folder / "linked.gcode"
        link.symlink_to(outside)
        assert link.is_file() and link.read_text() == gcode(5)  # the harm: it reads as G-code
        clock.now = 1.0
        [outcome] = await hot.scan_once()
        assert outcome.rejected is not None and "a symbolic link (to '" in outcome.rejected
        # The reason names the link's target, cut to the .error file's bound.
        said = (hot.rejected / "linked.gcode.error").read_text()
        target = said.split("(to '", 1)[1].split("'", 1)[0]
        assert target == str(outside) or str(outside).startswith(target.removesuffix("..."))
        assert outside.read_text() == gcode(5)
        assert await app.jobs.list_jobs() == []


async def test_the_configured_folder_may_itself_be_a_link(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        real = tmp_path / "real-hot"
        real.mkdir()
        (tmp_path / "x").mkdir()
        clock_hot, clock = folder_for(app, tmp_path / "x", hotfolder_settle_s=0.0)
        (tmp_path / "x" / "hot").rmdir()
        (tmp_path / "x" / "hot").symlink_to(real)
        (real / "cube.gcode").write_text(gcode(5))
        clock.now = 1.0
        [outcome] = await clock_hot.scan_once()
        assert outcome.accepted is not None
        assert not (real / "cube.gcode").exists()


async def test_rejected_linked_elsewhere_overwrites_nothing(tmp_path: Path) -> None:
    cell = cell_for(tmp_path)
    async with running(cell) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        db = cell.state_dir / "cellctl.db"
        db_sum = digest(db)
        (hot.folder / "rejected").symlink_to(cell.state_dir)
        (hot.folder / "cellctl.db").write_bytes(b"not a database")
        # The harm: moving the dropped file to rejected/ would replace the live database.
        assert (hot.folder / "rejected" / "cellctl.db").resolve() == db.resolve()
        clock.now = 1.0
        assert await hot.scan_once() == []  # nowhere safe to put it: it stays
        assert digest(db) == db_sum
        assert (hot.folder / "cellctl.db").read_bytes() == b"not a database"
        assert not (cell.state_dir / "cellctl.db.error").exists()


async def test_hard_link_and_fifo_are_refused_without_reading(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        outside = tmp_path / "kept.gcode"
        outside.write_text(gcode(5))
        os.link(outside, hot.folder / "hard.gcode")
        os.mkfifo(hot.folder / "pipe.gcode")  # opening it to read would block the scan forever
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert "2 names (hard links)" in (outcomes["hard.gcode"].rejected or "")
        assert "a FIFO, not a file" in (outcomes["pipe.gcode"].rejected or "")
        assert outside.read_text() == gcode(5)
        assert await app.jobs.list_jobs() == []


def test_delete_rechecks_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "drop.gcode"
    path.write_text("G28\n")
    read = Identity.of(path.stat())
    # The harm: the file read is replaced (same name, another file) before the delete.
    path.unlink()
    path.write_text("G28\nsomeone else's file\n")
    root = Folder.open_root(tmp_path)
    try:
        assert not root.unlink_if_same("drop.gcode", read)
        assert path.read_text() == "G28\nsomeone else's file\n"
        assert root.unlink_if_same("drop.gcode", Identity.of(path.stat()))
        assert not path.exists()
        assert [p.name for p in tmp_path.iterdir()] == []  # nothing left aside
    finally:
        root.close()


class _AppendWhileCommitting:
    """The job service, but a writer appends to the file while the job is committed."""

    def __init__(self, jobs: Any, victim: Path) -> None:
        self._jobs = jobs
        self.programs = jobs.programs
        self.ready = jobs.ready
        self.victim = victim

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        with self.victim.open("a") as f:
            f.write("G1 X99 ; the rest, written late\n")
        return await self._jobs.submit(*args, **kwargs)


async def test_file_changed_after_reading_is_kept_not_deleted(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        path = hot.folder / "late.gcode"
        path.write_text("G28\nG1 X1\n")
        hot._jobs = _AppendWhileCommitting(app.jobs, path)  # type: ignore[assignment]
        clock.now = 1.0
        [outcome] = await hot.scan_once()
        assert outcome.accepted is not None
        # Not deleted: the late part is in rejected/, with why.
        kept = hot.rejected / "late.gcode"
        assert kept.read_text().endswith("the rest, written late\n")
        error = (hot.rejected / "late.gcode.error").read_text()
        assert f"changed after it was read for job {outcome.accepted}" in error
