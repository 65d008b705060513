"""The cell publishes its liveness, device state, samples and events; commands get replies."""

from __future__ import annotations

from pathlib import Path

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, service, sims, write_config

from cellctl.telemetry.topics import Topics


async def test_online_state_events_and_offline_on_clean_shutdown(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything]).start()
    try:
        async with running_app(cell) as app:
            await sub.online()
            d1, d2 = sims(cell)
            d1.set_state("execute", "started")
            d1.alarm("E", "too hot")
            d2.sample("temp", 21.5)
            d2.request("load_material", "PLA, please")
            await sub.wait_for(
                lambda: sub.on("d1/alarms") and sub.on("d2/requests") and sub.on("d2/samples"),
                "events",
            )
            states = [m.json() for m in sub.on("d1/state")]
            assert states[-1]["state"] == "execute"
            assert [s["seq"] for s in states] == list(range(1, len(states) + 1))
            alarm = sub.on("d1/alarms")[0].json()
            assert alarm["seq"] == 1  # a sequence per (source, topic): alarms count alone
            assert sub.on("d2/samples")[0].json()["samples"][0]["value"] == 21.5
            assert service(app).publisher is not None
        status = [m.json()["state"] for m in sub.on("/status")]
        assert status[-1] == "offline"
    finally:
        sub.stop()


async def test_device_commands_get_replies(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    try:
        async with running_app(cell):
            await sub.online()
            d1, _ = sims(cell)
            r = await cmd.send("pause", {"device": "d1"})
            assert r["outcome"] == "rejected" and "idle" in r["reason"], r
            d1.set_state("execute")
            await sub.wait_for(
                lambda: any(m.json()["state"] == "execute" for m in sub.on("d1/state")), "execute"
            )
            r = await cmd.send("pause", {"device": "d1", "id": "p1"})
            assert r["outcome"] == "accepted" and r["id"] == "p1", r
            assert d1.commands[-1][0] == "pause"
            r = await cmd.send("pause", {"device": "nope"})
            assert r["outcome"] == "rejected" and "unknown device" in r["reason"]
            r = await cmd.send("pause", {"device": "d1", "extra": 1})
            assert r["outcome"] == "rejected" and "unknown field 'extra'" in r["reason"]
            r = await cmd.send("pause", b"{not json")
            assert r["outcome"] == "rejected" and "malformed JSON" in r["reason"]
            r = await cmd.send("frobnicate", {})
            assert r["outcome"] == "rejected" and "unknown command" in r["reason"]
            r = await cmd.send("out_of_service", {"device": "d2", "reason": "nozzle"})
            assert r["outcome"] == "accepted" and r["result"]["in_service"] is False
            await sub.wait_for(lambda: len(sub.on("/audit")) >= 7, "audit")
            audit = [m.json() for m in sub.on("/audit")]
            assert [a["outcome"] for a in audit].count("accepted") == 2
            assert audit[1]["origin"]["client_id"] == sub.client_id
    finally:
        sub.stop()
