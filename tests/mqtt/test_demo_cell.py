"""The demo cell (configs/demo.toml, every driver simulated) emits only schema-valid messages."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
from mqtt_broker import Mosquitto
from mqtt_rig import Subscriber, schema_for

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.telemetry import schemas
from cellctl.telemetry.topics import Topics

DEMO = Path(__file__).parents[2] / "configs" / "demo.toml"


async def test_demo_cell_messages_validate(tmp_path: Path, broker: Mosquitto) -> None:
    text = DEMO.read_text()
    text = re.sub(
        r"(?ms)^\[mqtt\].*\Z", f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n', text
    )
    (tmp_path / "demo.toml").write_text(text)
    cell = config_mod.load(tmp_path / "demo.toml")
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything]).start()
    app = App(cell)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            await sub.online()
            # Wait for every device to report a state (connected or not).
            await sub.wait_for(
                lambda: {m.topic.split("/")[-2] for m in sub.on("/state")} >= set(cell.devices),
                "a state from every device",
                within_s=30,
            )
            app.request_stop()
            async with asyncio.timeout(20):
                await task
    finally:
        sub.stop()
    assert sub.messages
    for m in sub.messages:
        kind = schema_for(m, topics)
        name = kind if kind.startswith("command.") else f"payload.{kind}"
        schema = json.loads((schemas.SCHEMA_DIR / f"{name}.json").read_text())
        jsonschema.validate(m.json(), schema)
    assert sub.on("/status")[-1].json()["state"] == "offline"


IDLE_BOUND = 3.0  # messages/s; docs/mqtt.md, "Report by exception" (18/s without it)
IDLE_WINDOW_S = 10.0


async def test_idle_demo_cell_is_quiet(tmp_path: Path, broker: Mosquitto) -> None:
    """Report by exception: the idle demo sends (almost) nothing but what changes."""
    text = DEMO.read_text()
    text = re.sub(
        r"(?ms)^\[mqtt\].*\Z", f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n', text
    )
    (tmp_path / "demo.toml").write_text(text)
    cell = config_mod.load(tmp_path / "demo.toml")
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything]).start()
    app = App(cell)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            async with asyncio.timeout(60):
                await app.supervisor.started.wait()
                for runner in app.supervisor.runners.values():
                    await runner.connected.wait()
            await asyncio.sleep(5.0)  # every first value and snapshot goes out
            start = len(sub.messages)
            await asyncio.sleep(IDLE_WINDOW_S)
            window = sub.messages[start:]
            app.request_stop()
            async with asyncio.timeout(20):
                await task
    finally:
        sub.stop()
    # Quiet, yet complete: every device's snapshot describes its metrics, with values.
    snaps = {m.topic.split("/")[-2]: m.json() for m in sub.on("/snapshot")}
    assert set(snaps) == set(cell.devices)
    for dev, snap in snaps.items():
        assert snap["metrics"], dev
        assert all(m["type"] is not None for m in snap["metrics"].values()), dev
    hotend = snaps["printer-1"]["metrics"]["hotend_temp"]
    assert hotend["unit"] == "degC" and isinstance(hotend["value"], float)
    rate = len([m for m in window if not m.retain]) / IDLE_WINDOW_S
    kinds = sorted({m.topic.rsplit("/", 1)[1] for m in window})
    assert rate < IDLE_BOUND, f"{rate:.1f} messages/s at idle ({kinds})"
