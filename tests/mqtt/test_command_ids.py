"""Idempotent command ids over a real broker: a replayed cancel is answered once, a
replayed estop is acted on again; ids are per user."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, sims, write_config

from cellctl.telemetry.topics import Topics

# A setup no device has: the job stays queued while the test looks at it.
JOB = {"job": "j-1", "steps": [{"process": "print", "gcode": "G28\n", "setup": {"x": "y"}}]}


def audit(cell_dir: Path, command: str) -> list[str | None]:
    with sqlite3.connect(cell_dir / "state" / "cellctl.db") as conn:
        rows = conn.execute(
            "SELECT request_id FROM command_audit WHERE command = ? ORDER BY id", (command,)
        )
        return [r[0] for r in rows]


async def test_replayed_cancel_answered_once_estop_acted_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=2))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [f"{topics.base}/replies/#", topics.status]).start()
    cmd = Commander(sub, topics, user="alice")
    other = Commander(sub, topics, user="bob")
    try:
        async with running_app(cell):
            await sub.online()
            r = await cmd.send("submit", {**JOB, "id": "s-1"})
            assert r["outcome"] == "accepted", r
            first = await cmd.send("cancel", {"job": "j-1", "reason": "first", "id": "c-1"})
            assert first["outcome"] == "accepted" and first["result"]["state"] == "cancelled"
            # The job is submitted again under the same job id (repeat: ended makes a new
            # one): a replayed cancel must not cancel it.
            again_job = await cmd.send("submit", {**JOB, "repeat": "ended", "id": "s-2"})
            assert again_job["outcome"] == "accepted", again_job
            new_id = again_job["result"]["id"]
            assert new_id != "j-1"
            replay = await cmd.send("cancel", {"job": "j-1", "reason": "replay", "id": "c-1"})
            assert replay["outcome"] == "accepted" and replay["id"] == "c-1"
            assert replay["result"] == first["result"]  # the first reply, word for word
            # The same id for another command: refused, nothing done.
            r = await cmd.send("cancel", {"job": new_id, "id": "s-1"})
            assert r["outcome"] == "rejected" and "already used for 'submit'" in r["reason"], r
            r = await cmd.send("jobs", {"job": new_id})
            assert r["result"][0]["state"] == "queued", r
            # Ids are per user: bob's c-1 is his own command.
            r = await other.send("cancel", {"job": new_id, "id": "c-1"})
            assert r["outcome"] == "accepted" and r["result"]["state"] == "cancelled", r

            # An estop is acted on every time, whatever its id.
            for _ in range(2):
                r = await cmd.send("estop", {"reason": "test", "id": "e-1"})
                assert r["outcome"] == "accepted" and len(r["result"]["stopped"]) == 2, r
            for sim in sims(cell):
                await sub.wait_for(
                    lambda s=sim: [c for c, _ in s.commands].count("estop") == 2,
                    "two estops at every device",
                )
        # The replay did nothing: one audit row per cancel carried out.
        assert audit(tmp_path, "cancel").count("c-1") == 2  # alice's and bob's
        assert audit(tmp_path, "estop") == ["e-1", "e-1"]
    finally:
        sub.stop()


async def test_replayed_id_survives_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [f"{topics.base}/replies/#", topics.status]).start()
    cmd = Commander(sub, topics, user="alice")
    try:
        async with running_app(cell):
            await sub.online()
            assert (await cmd.send("submit", JOB))["outcome"] == "accepted"
            first = await cmd.send("cancel", {"job": "j-1", "id": "c-9"})
            assert first["outcome"] == "accepted"
        sub.messages.clear()
        async with running_app(cell):
            await sub.online()
            replay = await cmd.send("cancel", {"job": "j-1", "id": "c-9"})
            assert replay["result"] == first["result"]
        assert audit(tmp_path, "cancel") == ["c-9"]
    finally:
        sub.stop()
