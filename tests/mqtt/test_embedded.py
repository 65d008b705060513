"""`embedded = true` with nothing listening: amqtt starts in-process, MQTT 3.1.1 replies work."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.client as paho
from mqtt_broker import free_port
from mqtt_rig import load, running_app, service, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.telemetry.topics import Topics


async def test_embedded_broker_and_311_replies(tmp_path: Path) -> None:
    port = free_port()
    cell = load(write_config(tmp_path / "cell.toml", port, devices=1, mqtt_extra="embedded = true"))
    topics = Topics(cell.name)
    async with running_app(cell) as app:
        assert service(app).embedded_started
        link = service(app).link
        assert link is not None
        await link.wait_connected(15)
        assert not link.settings.mqtt5
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()
        subscribed = asyncio.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
        c.on_connect = lambda cl, *a: cl.subscribe(topics.reply("amy", "pause"), 1)
        c.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
        c.on_message = lambda cl, u, m: loop.call_soon_threadsafe(got.put_nowait, m.payload)
        c.connect("127.0.0.1", port)
        c.loop_start()
        try:
            async with asyncio.timeout(15):
                await subscribed.wait()
                c.publish(
                    topics.command("amy", "pause"), json.dumps({"device": "d1", "id": "q1"}), 1
                )
                reply = json.loads(await got.get())
        finally:
            c.disconnect()
            c.loop_stop()
        assert reply["id"] == "q1" and reply["outcome"] == "rejected"  # d1 is idle
