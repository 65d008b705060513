"""A full disk under the state directory: the cell refuses new work, keeps stopping,
pausing and publishing, answers its emergency stop, survives a restart, and recovers
by itself once there is room (issue 17).

The disk is a small tmpfs the test mounts (tests/support/smalldisk.py). A reader
holding a snapshot open keeps SQLite from rewinding its WAL, so once the disk is full
every write needs new space and fails: the test sees the same store all the way
through, not one that happens to find room in a WAL it already grew.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog
from mqtt_broker import Mosquitto
from mqtt_rig import BOUND, Commander, Subscriber, load, running_app, service, sims, write_config
from support.smalldisk import fill, rerun_in_userns, small_disk

from cellctl.telemetry.topics import Topics

STORE = """
[store]
min_free_mb = 2
"""


def job(job_id: str) -> dict[str, Any]:
    return {"job": job_id, "steps": [{"process": "print", "gcode": "G28\nG1 X1\n"}]}


async def until(pred: Any, what: str, nudge: Any = None, within_s: float = BOUND) -> None:
    try:
        async with asyncio.timeout(within_s):
            while not pred():
                if nudge is not None:
                    nudge()
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


async def test_disk_full_refuses_work_keeps_control_and_recovers(
    tmp_path: Path, broker: Mosquitto, request: pytest.FixtureRequest
) -> None:
    if rerun_in_userns(request, tmp_path):
        return
    cfg = write_config(tmp_path / "cell.toml", broker.port, telemetry=STORE)
    cell = load(cfg)
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    with small_disk(tmp_path / "state", 16) as state:
        reader: sqlite3.Connection | None = None
        try:
            with structlog.testing.capture_logs() as logs:
                async with running_app(cell) as app:
                    await sub.online()
                    r = await cmd.send("submit", job("before"))
                    assert r["outcome"] == "accepted", r
                    # Done before the drill: an emergency stop would hold it (not end it).
                    await until(
                        lambda: all(j.state.terminal for j in app.jobs._jobs.values()),
                        "the job before done",
                    )

                    filler = fill(state)
                    reader = sqlite3.connect(state / "cellctl.db", isolation_level=None)
                    reader.execute("BEGIN")
                    reader.execute("SELECT count(*) FROM jobs").fetchone()
                    d1, d2 = sims(cell)
                    n = iter(range(1_000_000))
                    # Events go to the spool; the first commit that finds no room marks it.
                    await until(
                        lambda: app.store.full,
                        "the store to find the disk full",
                        lambda: d1.alarm("F", f"filler {next(n)}"),
                    )

                    r = await cmd.send("submit", job("during"))
                    assert r["outcome"] == "rejected", r
                    assert "min_free_mb" in r["reason"] and "free some space" in r["reason"], r

                    d2.sample("temp", 42.5)
                    await sub.wait_for(
                        lambda: any(
                            s["value"] == 42.5
                            for m in sub.on("d2/samples")
                            for s in m.json()["samples"]
                        ),
                        "a sample published while the disk is full",
                    )

                    r = await cmd.send("estop", {"reason": "disk full drill"})
                    assert r["outcome"] == "accepted", r
                    assert r["result"]["stopped"] == ["d1", "d2"], r
                    assert d1.commands[-1][0] == "estop" and d2.commands[-1][0] == "estop"

                    r = await cmd.send("reset", {"device": "d1"})
                    assert r["outcome"] == "accepted", r
                    d1.set_state("execute")
                    await until(
                        lambda: app.supervisor.runners["d1"].state.label == "execute", "execute"
                    )
                    r = await cmd.send("pause", {"device": "d1"})
                    assert r["outcome"] == "accepted", r
                    assert app.store.full  # all of it happened with the disk full
                    assert service(app).spool is not None
                    assert service(app).spool.counters.dropped_disk_full > 0
                    await until(lambda: app.degraded == "disk full", "degraded: disk full")
                # A clean stop with the disk full: the goodbye's commit fails quietly.

            said = events(logs)
            assert "emergency stop carried out; its audit row could not be written" in said
            assert "pause carried out; its audit row could not be written" in said
            assert not [e for e in logs if e.get("exc_info")], "a traceback was logged"

            # Restart with the disk still full: it runs, degraded, and still answers.
            sub.messages.clear()  # `online` must come from the new daemon (subscribed)
            with structlog.testing.capture_logs() as logs:
                async with running_app(cell) as app:
                    await sub.online()
                    await until(lambda: app.degraded is not None, "degraded at start")
                    r = await cmd.send("submit", job("restart"))
                    assert r["outcome"] == "rejected" and "min_free_mb" in r["reason"], r
                    r = await cmd.send("estop", {})
                    assert r["outcome"] == "accepted", r

                    # Space returns: the cell notices by itself and takes work again.
                    reader.rollback()
                    reader.close()
                    reader = None
                    filler.unlink()
                    await until(lambda: app.degraded is None, "no longer degraded")
                    r = await cmd.send("submit", job("after"))
                    assert r["outcome"] == "accepted", r
                    for dev in ("d1", "d2"):  # out of the emergency stop: the job can run
                        r = await cmd.send("reset", {"device": dev})
                        assert r["outcome"] == "accepted", r
                    await until(
                        lambda: all(j.state.terminal for j in app.jobs._jobs.values()),
                        "jobs done",
                    )
            assert (
                "store degraded: new jobs are refused; stop, pause, emergency stop"
                " and telemetry go on" in events(logs)
            )
            assert "store no longer degraded" in events(logs)
            db = sqlite3.connect(state / "cellctl.db")
            try:
                ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY seq")]
                assert ids == ["before", "after"]
                audited = [r[0] for r in db.execute("SELECT command FROM command_audit")]
                assert "submit" in audited  # the job accepted after recovery has its row
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                db.close()
        finally:
            if reader is not None:
                reader.close()
            sub.stop()
