"""A cell under test (supervisor + MQTT component, as App wires them) and a plain subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from mqtt_testdev import TestDriver, TestSim
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.config import Cell
from cellctl.registry import Registry
from cellctl.telemetry.service import MqttService
from cellctl.telemetry.topics import Topics

REGISTRY = Registry(extra_drivers={"testdev": TestDriver}, extra_sims={"testdev": TestSim})
BOUND = 15.0


def write_config(
    path: Path,
    port: int,
    devices: int = 2,
    mqtt_extra: str = "",
    telemetry: str = "",
    burst: int = 0,
    name: str = "t1",
    access: str = "allow_anonymous = true",
) -> Path:
    """The test broker lets anyone in, so the cell must be told so (`access`)."""
    text = f"""
[cell]
name = "{name}"
state_dir = "state"

[supervisor]
backoff_initial_s = 0.1
backoff_max_s = 1.0

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_initial_s = 0.1
reconnect_max_s = 1.0
keepalive_s = 5
{mqtt_extra}
{telemetry}
"""
    for i in range(1, devices + 1):
        text += f"""
[devices.d{i}]
driver = "testdev"
backend = "sim"
processes = ["print"]
[devices.d{i}.sim]
tag = "{name}-d{i}"
burst = {burst}
"""
    text += f"\n[access]\n{access}\n"
    path.write_text(text)
    return path


def load(path: Path) -> Cell:
    return config_mod.load(path, REGISTRY)


@contextlib.asynccontextmanager
async def running_app(cell: Cell) -> AsyncIterator[App]:
    """The whole App (signals, supervisor, MQTT) in this loop; stopped cleanly on exit."""
    app = App(cell, REGISTRY)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(app.run())
        try:
            assert app.mqtt is not None
            async with asyncio.timeout(BOUND):
                await app.mqtt.ready.wait()
                await app.supervisor.started.wait()
                for runner in app.supervisor.runners.values():
                    await runner.connected.wait()
            yield app
        finally:
            app.request_stop()
            async with asyncio.timeout(BOUND):
                await task


def sims(cell: Cell) -> list[TestSim]:
    return [TestSim.instances[f"{cell.name}-{d}"] for d in cell.devices]


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """paho in its own thread (independent of the code under test), feeding an asyncio list."""

    port: int
    topics: list[str]
    qos: int = 1
    client_id: str = field(default_factory=lambda: f"sub-{uuid.uuid4().hex[:8]}")
    persistent: bool = False
    username: str | None = None
    password: str | None = None
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._loop.call_soon_threadsafe(self._changed.set)
        self.client.on_connect_fail = lambda *a: self._loop.call_soon_threadsafe(self._changed.set)

    def _on_connect(self, c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        for t in self.topics:
            c.subscribe(t, self.qos)

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        m = Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties)
        self._loop.call_soon_threadsafe(self._add, m)

    def _add(self, m: Message) -> None:
        self.messages.append(m)
        self._changed.set()

    async def start(self) -> Subscriber:
        props = None
        if self.persistent:
            props = Properties(paho.PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect_async(
            "127.0.0.1", self.port, keepalive=5, clean_start=not self.persistent, properties=props
        )
        self.client.loop_start()
        await self.wait_for(lambda: self.client.is_connected(), "subscriber connected")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    async def wait_for(self, pred: Callable[[], bool], what: str, within_s: float = BOUND) -> None:
        try:
            async with asyncio.timeout(within_s):
                while True:
                    self._changed.clear()
                    if pred():
                        return
                    # paho's connection state is not a message: look again now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def online(self) -> None:
        """The cell announced itself: its command subscription is in place (same connection)."""
        await self.wait_for(
            lambda: any(m.json().get("state") == "online" for m in self.on("/status")), "online"
        )

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.messages if m.topic.endswith(suffix)]


class Commander:
    """Sends commands like a client would: MQTT 5 response topic + correlation data,
    as `user` (the broker user it logged in as, or a mere claim on an open broker)."""

    def __init__(self, sub: Subscriber, topics: Topics, user: str | None = None) -> None:
        self.sub = sub
        self.topics = topics
        self.user = user or sub.username or "tester"
        self.reply_topic = f"{topics.replies(self.user)}/{sub.client_id}"
        self.n = 0

    async def send(
        self, command: str, payload: bytes | dict[str, Any], within_s: float = BOUND
    ) -> dict[str, Any]:
        self.n += 1
        corr = f"c{self.n}".encode()
        props = Properties(paho.PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        props.UserProperty = ("client_id", self.sub.client_id)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        topic = self.topics.command(self.user, command)
        self.sub.client.publish(topic, body, qos=1, properties=props)

        def found() -> Message | None:
            for m in self.sub.messages:
                if (
                    m.topic == self.reply_topic
                    and getattr(m.properties, "CorrelationData", None) == corr
                ):
                    return m
            return None

        await self.sub.wait_for(lambda: found() is not None, f"reply to {command}", within_s)
        msg = found()
        assert msg is not None
        reply: dict[str, Any] = msg.json()
        return reply


def service(app: App) -> MqttService:
    assert app.mqtt is not None
    return app.mqtt


def schema_for(m: Message, topics: Topics) -> str:
    t = m.topic
    if not t.startswith(topics.base):
        return "reply"
    tail = t[len(topics.base) + 1 :].split("/")
    if tail[0] == "replies":
        return "reply"
    if tail[0] in ("status", "spool", "audit", "cell", "report"):
        return tail[0]
    if tail[0] == "devices":
        return {"alarms": "alarm", "requests": "request"}.get(tail[2], tail[2])
    if tail[0] == "jobs":
        return "job"
    if tail[0] == "plan":
        return "plan" if len(tail) == 1 else "plan_problem"
    if tail[0] == "cmd":
        return "command." + tail[2]
    raise AssertionError(f"unexpected topic {t}")
