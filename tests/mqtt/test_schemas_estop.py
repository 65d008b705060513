"""Everything the cell emits validates against cellctl/schemas; estop reaches every device."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from mqtt_broker import Mosquitto
from mqtt_rig import (
    Commander,
    Subscriber,
    load,
    running_app,
    schema_for,
    service,
    sims,
    write_config,
)

from cellctl.telemetry import schemas
from cellctl.telemetry.topics import Topics


def test_schema_files_match_the_models() -> None:
    for name, schema in schemas.generate().items():
        path = schemas.SCHEMA_DIR / name
        assert path.exists(), f"{name} missing: run python -m cellctl.telemetry.schemas"
        assert path.read_text() == schemas.dump(schema), f"{name} is stale"


async def test_every_message_validates_and_estop_reaches_every_device(
    tmp_path: Path, broker: Mosquitto
) -> None:
    telemetry = '[telemetry]\nbatch_s = 0.05\n[telemetry.metrics."*/temp"]\ndeadband = 0.5\n'
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=4, telemetry=telemetry))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    try:
        async with running_app(cell) as app:
            await sub.online()
            devs = sims(cell)
            for i, d in enumerate(devs):
                d.set_state("execute", "go")
                d.sample("temp", 20.0)
                d.sample("temp", 20.1)  # inside the deadband: not published
                d.sample("temp", 25.0)
                d.alarm("W", f"warn {i}")
                d.request("clear_bed", "take the part")
            await sub.wait_for(lambda: len(sub.on("/requests")) == 4, "requests")
            await cmd.send("pause", {"device": "zz"})
            r = await cmd.send("estop", {"reason": "test"})
            assert r["outcome"] == "accepted", r
            assert sorted(r["result"]["stopped"]) == ["d1", "d2", "d3", "d4"]
            assert all(d.stopped.is_set() for d in devs)
            commands = service(app).commands
            assert commands is not None and commands.last_estop_s is not None
            print(
                f"\nemergency stop: arrival → last device stopped: {r['result']['elapsed_ms']} ms"
            )
            await sub.wait_for(
                lambda: sum(m.json().get("state") == "aborted" for m in sub.on("/state")) == 4,
                "aborted states",
            )
            # a command message of our own, to validate its schema too
            await cmd.send("resume", {"device": "d1", "id": "x"})
            await sub.wait_for(lambda: len(sub.on("/audit")) == 3, "audit")
        values = [s["value"] for m in sub.on("d1/samples") for s in m.json()["samples"]]
        assert values == [20.0, 25.0]
        seen = set()
        for m in sub.messages:
            kind = schema_for(m, topics)
            name = kind if kind.startswith("command.") else f"payload.{kind}"
            schema = json.loads((schemas.SCHEMA_DIR / f"{name}.json").read_text())
            jsonschema.validate(m.json(), schema)
            seen.add(kind)
        assert {"status", "state", "samples", "alarm", "request", "audit", "reply", "spool"} <= seen
    finally:
        sub.stop()
