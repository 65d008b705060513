"""A bare paho client for tests that look at what the broker itself decides.

Its PUBACK reason codes show an ACL refusal (MQTT 5); its messages show what a
subscriber the cell does not control receives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

BOUND = 15.0


class RawClient:
    """One paho client (its own thread) whose PUBACKs and messages we can look at."""

    def __init__(self, port: int, login: tuple[str, str] | None, mqtt5: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.got: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.subscribed = asyncio.Event()
        self.connected = asyncio.Event()
        proto = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=proto)
        if login is not None:
            self.c.username_pw_set(*login)
        self.c.on_connect = lambda *a: self.loop.call_soon_threadsafe(self.connected.set)
        self.c.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(self.got.put_nowait, m)
        self.port = port

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        def done() -> None:
            fut = self.acks.setdefault(mid, self.loop.create_future())
            if not fut.done():
                fut.set_result(rc)

        self.loop.call_soon_threadsafe(done)

    async def __aenter__(self) -> RawClient:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        async with asyncio.timeout(BOUND):
            await self.connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    async def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.c.subscribe(topic, 1)
        async with asyncio.timeout(BOUND):
            await self.subscribed.wait()

    async def publish(
        self, topic: str, body: dict[str, Any] | bytes, props: Properties | None = None
    ) -> Any:
        """The broker's PUBACK reason code (MQTT 3.1.1: always success); a dict goes as JSON."""
        payload = json.dumps(body) if isinstance(body, dict) else body
        info = self.c.publish(topic, payload, qos=1, properties=props)
        fut = self.acks.setdefault(info.mid, self.loop.create_future())
        async with asyncio.timeout(BOUND):
            return await fut
