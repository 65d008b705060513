"""Job commands over MQTT reach the job service: submit (idempotent), jobs, cancel, events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, write_config

from cellctl.telemetry.topics import Topics


async def test_submit_list_cancel_and_job_events(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    try:
        async with running_app(cell):
            await sub.online()
            job = {"job": "j-1", "steps": [{"process": "print", "gcode": "G28\nG1 X10\n"}]}
            r = await cmd.send("submit", job)
            assert r["outcome"] == "accepted", r
            assert r["result"]["id"] == "j-1"
            again = await cmd.send("submit", job)
            assert again["outcome"] == "accepted" and again["result"]["seq"] == r["result"]["seq"]
            r = await cmd.send("submit", {"job": "j-2", "steps": [{"process": "weld"}]})
            assert r["outcome"] == "rejected" and r["reason"], r
            r = await cmd.send("jobs", {})
            assert r["outcome"] == "accepted" and [j["id"] for j in r["result"]] == ["j-1"]
            r = await cmd.send("cancel", {"job": "nope"})
            assert r["outcome"] == "rejected" and "nope" in r["reason"], r
            await sub.wait_for(
                lambda: any(m.json()["state"] == "done" for m in sub.on("j-1/events")),
                "job j-1 done",
            )
            events = [m.json() for m in sub.on("j-1/events")]
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
            r = await cmd.send("cancel", {"job": "j-1"})
            assert r["outcome"] == "accepted" and r["result"]["state"] == "done"
    finally:
        sub.stop()


async def test_submit_carries_what_a_job_file_says(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    job = {
        "job": "j-3",
        "priority": 4,
        "quantity": 2,
        "due": "2026-12-01T08:00:00+00:00",
        "steps": [
            # A setup no device has: the job stays queued while the test looks at it.
            {"process": "print", "gcode": "G28\r\n", "name": "parts/a.gcode", "setup": {"x": "y"}},
            {
                "process": "print",
                "recipe": "7",
                "parameters": {"speed": 2.5},
                "reserves": ["@previous"],
                "estimated_s": 3.0,
            },
        ],
    }
    try:
        async with running_app(cell):
            await sub.online()
            r = await cmd.send("submit", job)
            assert r["outcome"] == "accepted", r
            got = r["result"]
            assert (got["quantity"], got["priority"], len(got["steps"])) == (2, 4, 4)
            assert got["due"] == datetime(2026, 12, 1, 8, tzinfo=UTC).timestamp()
            first, second = got["steps"][:2]
            assert first["program"]["file"] == "parts/a.gcode"
            assert second["program"] == {
                "kind": "recipe",
                "sha256": None,
                "file": "",
                "name": "7",
                "parameters": {"speed": 2.5},
            }
            assert second["reserves"] == ["@previous"] and second["estimated_s"] == 3.0

            twice = [{"process": "print", "gcode": g, "name": "a.gcode"} for g in ("G1\n", "G2\n")]
            r = await cmd.send("submit", {"job": "j-4", "steps": twice})
            assert r["outcome"] == "rejected" and "given twice" in r["reason"], r
            bad = {"process": "print", "gcode": "G1\n", "name": "sha256:ab"}
            r = await cmd.send("submit", {"job": "j-5", "steps": [bad]})
            assert r["outcome"] == "rejected" and "name" in r["reason"], r

            r = await cmd.send("jobs", {"job": "j-3"})
            assert r["outcome"] == "accepted" and [j["id"] for j in r["result"]] == ["j-3"]
            assert isinstance(r["result"][0]["transitions"], list)
            r = await cmd.send("cancel", {"job": "j-3", "reason": "wrong part"})
            assert r["outcome"] == "accepted" and r["result"]["state"] == "cancelled"
            assert r["result"]["reason"] == "wrong part"

            r = await cmd.send("set_setup", {"device": "d1", "setup": {"a": "1"}})
            r = await cmd.send("set_setup", {"device": "d1", "setup": {"b": "2"}, "merge": True})
            assert r["outcome"] == "accepted" and r["result"]["setup"] == {"a": "1", "b": "2"}
    finally:
        sub.stop()
