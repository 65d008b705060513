"""Fuzzed command payloads (hypothesis): every one gets a reply, none crashes the cell."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_broker import Mosquitto
from mqtt_rig import Subscriber, load, running_app, service, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from cellctl.command_payloads import COMMANDS
from cellctl.telemetry.topics import Topics

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["device", "job", "id", "v", "steps", "kind", "setup", "line", "step", "reason", "x"]
)
objects = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=5)
payloads = (
    objects.map(lambda o: json.dumps(o).encode())
    | json_values.map(lambda o: json.dumps(o).encode())
    | st.binary(max_size=40)
)
names = st.sampled_from([*COMMANDS, "nope"])


class SyncClient:
    """A blocking command client for the hypothesis thread (paho in its own thread)."""

    def __init__(self, port: int, topics: Topics) -> None:
        self.topics = topics
        self.replies: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self.ready = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.reply_topic = f"{topics.replies('fuzz')}/r"
        self.c.on_connect = lambda c, *a: c.subscribe(self.reply_topic, 1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = lambda c, u, m: self.replies.put(
            (bytes(m.properties.CorrelationData), m.payload)
        )
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)
        self.n = 0

    def send(self, name: str, payload: bytes) -> dict[str, Any]:
        self.n += 1
        corr = str(self.n).encode()
        props = Properties(paho.PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        self.c.publish(self.topics.command("fuzz", name), payload, qos=1, properties=props)
        while True:
            got_corr, body = self.replies.get(timeout=10)
            if got_corr == corr:
                reply: dict[str, Any] = json.loads(body)
                return reply

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_fuzzed_commands_all_get_replies(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=2))
    topics = Topics(cell.name)
    watcher = await Subscriber(broker.port, [topics.status]).start()
    async with running_app(cell) as app:
        await watcher.online()
        client = await asyncio.to_thread(SyncClient, broker.port, topics)
        outcomes: dict[str, int] = {}

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(name=names, payload=payloads)
        def fuzz(name: str, payload: bytes) -> None:
            reply = client.send(name, payload)
            assert reply["command"] == name
            assert reply["outcome"] in ("accepted", "rejected")
            if reply["outcome"] == "rejected":
                assert reply["reason"]
            outcomes[reply["outcome"]] = outcomes.get(reply["outcome"], 0) + 1

        try:
            await asyncio.to_thread(fuzz)
        finally:
            client.close()
        commands = service(app).commands
        assert commands is not None and commands.handled >= 80
        # Still alive and answering after all that.
        assert service(app).link is not None and service(app).link.is_connected  # type: ignore[union-attr]
    watcher.stop()
    assert outcomes.get("rejected", 0) > 0
