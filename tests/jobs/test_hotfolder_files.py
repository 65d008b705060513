"""What a dropped file must be to become a job (issue 16): not empty, text, ASCII outside
comments (Latin-1 comments welcome), lines and size within the limits, a known kind, and
complete: renamed in, ended by its slicer's marker, or unchanged for the settle time; a
file ending mid-line waits. Each test first shows the harm (what the old rules let
through), then the refusal, with the reason in `rejected/<name>.error`."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from pathlib import Path

from jobs.conftest import gcode, make_cell, printer, robot, running
from jobs.test_hotfolder import folder_for

from cellctl.config import Cell, JobsSection
from cellctl.jobs.content import BLOCK
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.jobfiles import gcode_job


def cell_for(tmp_path: Path) -> Cell:
    return make_cell(tmp_path, {"p1": printer(), "arm": robot()}, {"dispatch_interval_s": 0.2})


def would_be_a_job(path: Path) -> bool:
    """The harm: with only the old rules (a settled G-code file), this is a valid job."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = gcode_job(JobsSection(), path, digest, scan_file(path))
    return spec.route[0].program == path.name


async def test_bad_content_goes_to_rejected_with_an_escaped_reason(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0, hotfolder_max_line=200)
        rng = random.Random(16)
        drops = {
            "empty.gcode": b"",
            "comments.gcode": b"; nothing but a comment\n\n(and another)\n",
            "random.gcode": bytes(rng.randrange(256) for _ in range(20_000)),
            "nul.gcode": b"G28\nG1 X1\x00\x1b[2J\n",
            "accent.gcode": b"G28\nM117 Caf\xe9 ouvert\n",
            "long.gcode": b"G28\nG1 X" + b"1" * 500 + b"\n",
        }
        for name, data in drops.items():
            (hot.folder / name).write_bytes(data)
            assert would_be_a_job(hot.folder / name), name
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert set(outcomes) == set(drops)
        errors = {n: (hot.rejected / (n + ".error")).read_text("ascii") for n in drops}
        assert errors["empty.gcode"] == "empty.gcode: empty file\n"
        assert "no G-code command in it" in errors["comments.gcode"]
        assert "control byte" in errors["random.gcode"] or "longer than" in errors["random.gcode"]
        assert errors["nul.gcode"] == (
            "nul.gcode: line 2: control byte \\x00 at column 6: G1 X1\\x00\\x1b[2J\n"
        )
        assert "non-ASCII byte \\xe9 outside a comment at column 9" in errors["accent.gcode"]
        assert "line 2: longer than 200 bytes" in errors["long.gcode"]
        for name, text in errors.items():
            assert text.isprintable() or text[:-1].isprintable(), name
            shown = text.rsplit(": ", 1)[-1].rstrip("\n")
            assert len(shown) <= 80, (name, shown)
            assert (hot.rejected / name).read_bytes() == drops[name]  # moved, not altered
        assert await app.jobs.list_jobs() == []


async def test_latin1_comments_of_an_old_cam_post_are_accepted(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        text = "; Fräse für Aluminium, Ø 6 mm\nG28 (Référence)\nG1 X10 F600 ; Vorschub\n"
        (hot.folder / "alu.gcode").write_bytes(text.encode("latin-1"))
        (hot.folder / "utf8.gcode").write_bytes(text.encode("utf-8"))
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert all(o.accepted for o in outcomes.values()), outcomes
        assert len(outcomes) == 2


async def test_reading_is_bounded_for_a_file_without_newlines(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        path = hot.folder / "blob.gcode"
        size = 16 * BLOCK
        path.write_bytes(b"G" * size)
        # The harm: a plain line reader (the old one) builds the whole "line" in memory.
        tracemalloc.start()
        try:
            with path.open("r", encoding="utf-8", errors="replace") as f:
                next(iter(f))
            old_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            scan_file(path)  # what `cellctl submit` and the job service read with
            scan_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            clock.now = 1.0
            [outcome] = await hot.scan_once()
            hot_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert old_peak > size
        assert hot_peak < 2 * BLOCK, hot_peak  # a block and a line, whatever the size (16 blocks)
        assert scan_peak < 4 * BLOCK, scan_peak
        assert "line 1: longer than 32768 bytes" in (outcome.rejected or "")


async def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0, hotfolder_max_bytes=1000)
        (hot.folder / "big.gcode").write_text(gcode(100))
        clock.now = 1.0
        [outcome] = await hot.scan_once()
        assert "over hotfolder_max_bytes = 1000" in (outcome.rejected or "")


async def test_unknown_kinds_go_to_rejected(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.5)
        (hot.folder / "notes.txt").write_text("call Bob about the bracket\n")
        (hot.folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 JFIF")
        (hot.folder / "parts").mkdir()  # a sub-folder holds programs: left alone
        clock.now = 0.0
        assert await hot.scan_once() == []  # still settling: may still be copied in
        clock.now = 1.0
        outcomes = {o.name: o for o in await hot.scan_once()}
        assert set(outcomes) == {"notes.txt", "photo.jpg"}
        for name in outcomes:
            assert "unknown kind of file" in (hot.rejected / f"{name}.error").read_text()
        assert (hot.folder / "parts").is_dir()


async def test_slow_writer_pausing_past_the_settle_time_gets_one_whole_job(
    tmp_path: Path,
) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.2, hotfolder_missing_s=5.0)
        path = hot.folder / "slow.gcode"
        whole = "G28\n" + "".join(f"G1 X{i} Y{i} F3000\n" for i in range(200))
        cut = whole.index("G1 X120") + 5  # the writer pauses in the middle of a line
        path.write_text(whole[:cut])
        clock.now = 0.0
        assert await hot.scan_once() == []
        clock.now = 2.5
        # The harm: unchanged for longer than the settle time, which alone said "complete".
        assert hot._age("slow.gcode") >= 0.2
        assert await hot.scan_once() == []
        with path.open("a") as f:
            f.write(whole[cut:])
        clock.now = 2.6
        assert await hot.scan_once() == []
        clock.now = 3.0
        [outcome] = await hot.scan_once()
        assert outcome.accepted is not None
        job = await app.jobs.get(outcome.accepted)
        assert job.steps[0].program_sha256 == hashlib.sha256(whole.encode()).hexdigest()
        assert not path.exists()


async def test_renamed_in_or_end_marker_is_complete_at_once(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=60.0)
        part = hot.folder / "renamed.gcode.part"
        part.write_text("G28\nG1 X5\n")
        (hot.folder / "sliced.gcode").write_text(gcode(10))  # ends with its slicer's marker
        (hot.folder / "plain.gcode").write_text("G28\nG1 X6\n")
        clock.now = 0.0
        first = {o.name: o for o in await hot.scan_once()}
        assert set(first) == {"sliced.gcode"} and first["sliced.gcode"].accepted
        part.rename(hot.folder / "renamed.gcode")
        clock.now = 0.1
        [renamed] = await hot.scan_once()
        assert renamed.name == "renamed.gcode" and renamed.accepted
        assert (hot.folder / "plain.gcode").exists()  # neither: it waits for the settle time
        clock.now = 61.0
        [plain] = await hot.scan_once()
        assert plain.name == "plain.gcode" and plain.accepted


async def test_no_final_newline_waits_then_is_taken(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0, hotfolder_missing_s=5.0)
        (hot.folder / "hand.gcode").write_text("G28\nG1 X5")
        for t in (0.0, 1.0, 4.0):
            clock.now = t
            assert await hot.scan_once() == []
        clock.now = 5.5
        [outcome] = await hot.scan_once()
        assert outcome.accepted is not None


async def test_hostile_names_and_escapes_reach_no_terminal(tmp_path: Path) -> None:
    async with running(cell_for(tmp_path)) as app:
        hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
        for raw in (b"caf\xe9.gcode", b"\x1b[2J.gcode"):
            (hot.folder / os.fsdecode(raw)).write_bytes(b"G28\n")
        job = 'id = "x"\n[[route]]\nprocess = "\\u001b[31mred"\nprogram = "a.gcode"\n'
        (hot.folder / "esc.toml").write_text(job)
        (hot.folder / "a.gcode").write_text("G28\n")
        clock.now = 1.0
        outcomes = await hot.scan_once()
        assert len(outcomes) == 3 and all(o.rejected for o in outcomes), outcomes
        reasons = "\n".join(o.rejected or "" for o in outcomes)
        assert "caf\\xe9.gcode: the name holds unprintable bytes" in reasons
        assert "\\x1b[2J.gcode: the name holds unprintable bytes" in reasons
        assert "\\x1b[31mred" in reasons and "\x1b" not in reasons
        assert await app.jobs.list_jobs() == []
