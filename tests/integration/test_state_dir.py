"""The state directory on a bad day, with the real daemon as a subprocess (issue 17):
a second daemon is refused in one line, a damaged store is one clear error and is
kept aside, a logged exception carries no secret."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from integration.test_daemon import CONFIG, Daemon, NotifySocket
from support.daemon import LAUNCH

from cellctl.store import Store


def launch(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCH), str(cfg)], capture_output=True, text=True, timeout=60
    )


def test_second_daemon_is_refused_in_one_line_and_the_first_runs_on(tmp_path: Path) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    first_notify = NotifySocket(tmp_path / "n1.sock")
    first = Daemon(cfg, first_notify, {})
    try:
        first_notify.wait_for("READY=1")
        second = launch(cfg)
        assert second.returncode == 1
        assert second.stdout == ""
        state = tmp_path / "state"
        assert second.stderr.splitlines() == [
            f"cellctl: another cellctl (PID {first.proc.pid}) is running on the state "
            f"directory {state}; stop it first, or give this cell its own [cell] state_dir"
        ]
        assert first.proc.poll() is None
        # Killed hard, the first leaves its lock file behind: it blocks nobody.
        first.proc.kill()
        first.proc.wait(10)
        third_notify = NotifySocket(tmp_path / "n3.sock")
        third = Daemon(cfg, third_notify, {})
        try:
            third_notify.wait_for("READY=1")
            third.proc.send_signal(signal.SIGTERM)
            assert third.proc.wait(10) == 0
        finally:
            third.close()
            third_notify.sock.close()
    finally:
        first.close()
        first_notify.sock.close()
    assert "error" not in {line.get("level") for line in first.lines()}


def test_first_daemon_is_unharmed_by_the_refusal(tmp_path: Path) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    notify = NotifySocket(tmp_path / "n.sock")
    first = Daemon(cfg, notify, {})
    try:
        notify.wait_for("READY=1")
        assert launch(cfg).returncode == 1
        first.proc.send_signal(signal.SIGHUP)  # still serving: it reloads …
        first.wait_log("config reloaded")
        first.proc.send_signal(signal.SIGTERM)  # … and stops cleanly
        assert first.proc.wait(10) == 0
    finally:
        first.close()
        notify.sock.close()
    db = sqlite3.connect(tmp_path / "state" / "cellctl.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def make_store(db: Path, rows: int = 400) -> None:
    async def build() -> None:
        async with Store(db):
            pass

    asyncio.run(build())
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO command_audit (ts, command, origin, payload, outcome)"
            " VALUES (?, 'pause', '{}', ?, 'accepted')",
            [(float(i), bytes(600)) for i in range(rows)],
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def corrupt_middle_page(db: Path) -> bytes:
    data = bytearray(db.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = bytes((i * 37 + 11) % 256 for i in range(page))
    db.write_bytes(bytes(data))
    return bytes(data)


def test_damaged_store_is_one_clear_error_and_kept_aside(tmp_path: Path) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    db = tmp_path / "state" / "cellctl.db"
    db.parent.mkdir()
    make_store(db)
    damaged = corrupt_middle_page(db)

    proc = launch(cfg)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, out
    said = str(errors[0]["error"])
    asides = [
        p for p in db.parent.glob("cellctl.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(asides) == 1, asides
    aside = asides[0]
    assert said.startswith(f"the store {db} is damaged (quick_check: "), said
    assert f"moved aside to {aside} (not deleted)" in said
    assert "cellctl backup" in said
    assert aside.read_bytes() == damaged  # kept as it was found
    assert not db.exists()

    # The operator chose an empty store: the next start runs.
    notify = NotifySocket(tmp_path / "n.sock")
    again = Daemon(cfg, notify, {})
    try:
        notify.wait_for("READY=1")
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(10) == 0
    finally:
        again.close()
        notify.sock.close()
    assert aside.read_bytes() == damaged
