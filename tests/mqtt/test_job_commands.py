"""Job commands over MQTT reach the job service: submit (idempotent), jobs, cancel, events."""

from __future__ import annotations

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
