"""A changeover survives SIGKILL: the daemon (subprocess, `[scheduler] method =
"planner"`, jobsim printer at time_factor 1, 0.004 s a line) is killed while a
changeover is requested, again after its restart, and while the operator's answer
(the setup it loaded) is being applied. After each restart the request is made again
(nothing about it is lost), the stored setup is only ever what was confirmed, every
job ends done, no step ran on the wrong material (no pre-flight hold) and the
machine finished each step once. Wall time: about 10 s, bounded at 60 s per wait."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
from collections import Counter
from pathlib import Path

from jobs.conftest import gcode
from jobs.test_crash import (
    Operator,
    _run_operator,
    _spawn,
    _wait_loaded,
    check_consistent,
    drop,
    machine_log,
    read_store,
)

from cellctl.cli.jobs import queue_request
from cellctl.jobs import repo
from cellctl.jobs.jobfiles import job_id_for
from cellctl.jobs.records import JobRecord
from cellctl.model import JobState

BOUND = 60.0

CONFIG = """\
[cell]
name = "changeovercrash"
state_dir = "state"

[supervisor]
backoff_initial_s = 0.05
backoff_max_s = 0.2
shutdown_timeout_s = 5.0

[jobs]
hotfolder = "hot"
hotfolder_settle_s = 0.1
hotfolder_poll_s = 0.05
progress_flush_s = 0.05
dispatch_interval_s = 0.1

[scheduler]
method = "planner"
budget_s = 0.05
notice_s = 0  # asked for when the printer is free: nothing runs on it while asked

[devices.p1]
driver = "jobsim"
backend = "sim"
processes = ["print"]
setup = {{ material = "PLA", nozzle = "0.4" }}
build_volume = [250, 210, 210]
sim = {{ log = "{log}", line_s = 0.004, time_factor = 1.0, label = "p1" }}
"""

WAITING = "waiting for a changeover on p1"


def stored_setup(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return dict(repo.load_devices(conn)["p1"].setup)
    finally:
        conn.close()


async def wait_store(db: Path, pred: object, what: str) -> list[JobRecord]:
    async with asyncio.timeout(BOUND):
        while True:
            jobs, _ = await asyncio.to_thread(read_store, db)
            if pred(jobs):  # type: ignore[operator]
                return jobs
            await asyncio.sleep(0.05)
    raise AssertionError(what)


async def wait_log(errlog: Path, start: int, needle: bytes) -> None:
    async with asyncio.timeout(BOUND):
        while needle not in (await asyncio.to_thread(errlog.read_bytes))[start:]:
            await asyncio.sleep(0.05)


def waiting(jobs: list[JobRecord]) -> bool:
    return any(WAITING in s.reason for j in jobs for s in j.steps)


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_sigkill_while_a_changeover_is_requested_and_while_it_is_answered(
    tmp_path: Path,
) -> None:
    log = tmp_path / "machine.log"
    config = tmp_path / "cell.toml"
    config.write_text(CONFIG.format(log=log))
    folder = tmp_path / "hot"
    folder.mkdir()
    db = tmp_path / "state" / "cellctl.db"
    errlog = tmp_path / "daemon.log"
    errlog.touch()
    files = {
        "pla0.gcode": gcode(120, material="PLA"),
        "petg0.gcode": gcode(100, material="PETG"),
        "pla1.gcode": gcode(130, material="PLA"),
        "petg1.gcode": gcode(110, material="PETG"),
    }
    drop(folder, files)
    ids = {
        job_id_for(Path(n).stem, hashlib.sha256(t.encode()).hexdigest()) for n, t in files.items()
    }
    op = Operator(db, log)  # answers holds left by a kill mid-step, as in test_crash
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_run_operator(op, stop), name="operator")
        # 1. The PLA work first (it needs no changeover), then PETG is asked for: kill.
        start = errlog.stat().st_size
        proc = await _spawn(config, errlog)
        await _wait_loaded(errlog, start, proc)
        pla = {i for i in ids if i.startswith("pla")}

        def asked_after_pla(js: list[JobRecord]) -> bool:
            done = {j.id for j in js if j.state == JobState.DONE}
            return len(js) == 4 and waiting(js) and done == pla

        await wait_store(db, asked_after_pla, "the PLA work done, then a changeover requested")
        await kill(proc)
        check_consistent(db, folder, ids, "kill while requested")
        assert stored_setup(db)["material"] == "PLA"  # nothing confirmed yet
        # 2. After a restart the request is made again, from the store alone: kill again.
        start = errlog.stat().st_size
        proc = await _spawn(config, errlog)
        await _wait_loaded(errlog, start, proc)
        await wait_log(errlog, start, b"changeover request")
        await kill(proc)
        check_consistent(db, folder, ids, "kill after the request was made again")
        assert stored_setup(db)["material"] == "PLA"
        # 3. The operator loads PETG and answers; the daemon dies while applying it.
        start = errlog.stat().st_size
        proc = await _spawn(config, errlog)
        await _wait_loaded(errlog, start, proc)
        await wait_log(errlog, start, b"changeover request")
        answer = {"device": "p1", "setup": {"material": "PETG"}, "merge": True}
        await asyncio.to_thread(queue_request, db, "setup", answer)
        await asyncio.sleep(0.15)
        await kill(proc)
        check_consistent(db, folder, ids, "kill while the answer is applied")
        # 4. The last run ends the work and stops cleanly.
        start = errlog.stat().st_size
        proc = await _spawn(config, errlog)
        try:
            await _wait_loaded(errlog, start, proc)
            jobs = await wait_store(
                db,
                lambda js: len(js) == 4 and all(j.state.terminal for j in js),
                "every job ended",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                rc = await proc.wait()
            stop.set()
    assert rc == 0
    assert all(j.state == JobState.DONE for j in jobs), [(j.id, j.reason) for j in jobs]
    assert stored_setup(db)["material"] == "PETG"
    _, history = read_store(db)
    reasons = [h["reason"] or "" for hs in history.values() for h in hs]
    assert not [r for r in reasons if r.startswith("pre-flight")], "ran on a wrong setup"
    # One changeover, not two: both PLA steps ran before any PETG step.
    starts = [e[1].split("-")[0] for e in machine_log(log) if e and e[0] == "start"]
    assert sorted(starts[:2]) == ["pla0", "pla1"], starts
    done_counts = Counter(e[1] for e in machine_log(log) if e and e[0] == "done")
    assert len(done_counts) == 4 and all(n == 1 for n in done_counts.values()), done_counts
    assert '"level": "error"' not in errlog.read_text()


def uncleared(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT device_id, step_key FROM bed_uncleared")}
    finally:
        conn.close()


async def test_sigkill_after_a_print_keeps_its_bed_uncleared(tmp_path: Path) -> None:
    """The bed mark is written with the step's end: the daemon killed right after a print
    (`bed_clearing = ["p1"]`) restarts with the printer still gated, asks again, and
    prints the next job only once the bed is confirmed clear (the CLI's request)."""
    log = tmp_path / "machine.log"
    config = tmp_path / "cell.toml"
    config.write_text(
        CONFIG.format(log=log).replace("notice_s = 0", 'notice_s = 0\nbed_clearing = ["p1"]')
    )
    folder = tmp_path / "hot"
    folder.mkdir()
    db = tmp_path / "state" / "cellctl.db"
    errlog = tmp_path / "daemon.log"
    errlog.touch()
    first = {"a.gcode": gcode(60)}
    drop(folder, first)
    start = errlog.stat().st_size
    proc = await _spawn(config, errlog)
    try:
        await _wait_loaded(errlog, start, proc)
        jobs = await wait_store(
            db, lambda js: any(j.state == JobState.DONE for j in js), "the first print done"
        )
    finally:
        await kill(proc)
    [a] = jobs
    assert uncleared(db) == {"p1": f"{a.id}/0"}  # committed with the end, never after
    drop(folder, {"b.gcode": gcode(70)})
    start = errlog.stat().st_size
    proc = await _spawn(config, errlog)
    try:
        await _wait_loaded(errlog, start, proc)
        await wait_log(errlog, start, b"job accepted")
        await asyncio.sleep(1.0)  # ten dispatch ticks: the gate holds across the restart
        jobs, _ = await asyncio.to_thread(read_store, db)
        b = next(j for j in jobs if j.id != a.id)
        assert b.state == JobState.QUEUED, (b.state, b.reason)
        await asyncio.to_thread(queue_request, db, "clear_bed", {"device": "p1"})
        await wait_store(
            db, lambda js: len(js) == 2 and all(j.state.terminal for j in js), "both ended"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
    jobs, _ = await asyncio.to_thread(read_store, db)
    assert all(j.state == JobState.DONE for j in jobs), [(j.id, j.reason) for j in jobs]
    assert uncleared(db) == {"p1": f"{b.id}/0"}  # the second part waits now
    done_counts = Counter(e[1] for e in machine_log(log) if e and e[0] == "done")
    assert sorted(done_counts.values()) == [1, 1], done_counts


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_sigkill_mid_plan_leaves_no_worker_process(tmp_path: Path) -> None:
    """`worker = "process"`: the daemon killed while its planning process lives; that
    process ends by itself (it watches its parent) instead of waiting forever."""
    log = tmp_path / "machine.log"
    config = tmp_path / "cell.toml"
    config.write_text(
        CONFIG.format(log=log).replace("notice_s = 0", 'notice_s = 0\nworker = "process"')
    )
    (tmp_path / "hot").mkdir()
    errlog = tmp_path / "daemon.log"
    errlog.touch()
    proc = await _spawn(config, errlog)
    try:
        await _wait_loaded(errlog, 0, proc)
        await wait_log(errlog, 0, b"following the plan again")  # a plan came back
        workers = await asyncio.to_thread(children, proc.pid)
        assert workers, "no planning process"
    finally:
        await kill(proc)
    async with asyncio.timeout(BOUND):
        while any(alive(w) for w in workers):
            await asyncio.sleep(0.2)
