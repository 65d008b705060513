"""The cell as the panel sees it: retained snapshots, the changes after them, an hour of numbers.

One MQTT connection (the panel's own broker user, reading only) subscribes to
the retained `devices/+/snapshot`, `cell`, `status` and `plan`, and to the
`samples`, `state` and `progress` that follow them (docs/mqtt.md, "The
retained snapshot"). paho reconnects by itself and resubscribes in
`on_connect`; the broker then sends the retained snapshots again, which
replace what the panel held, so its view is right after any reconnect. Every
browser gets the whole view when its event stream (re)connects, then each
change. Numeric metrics are kept for an hour from the panel's start, for the
charts.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.cli.mqtt import Target

log = structlog.get_logger("cellctl.panel")

HISTORY_S = 3600.0
POINTS = 1800  # per series: a chart of an hour needs no more
QUEUE = 256  # changes a slow browser may lag behind before it is dropped (it reconnects)

Event = tuple[str, Any]


class CellView:
    """What the page needs, kept up to date from MQTT; browsers subscribe to its changes."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.base = target.topics.base
        self.devices: dict[str, dict[str, Any]] = {}
        self.cell: dict[str, Any] = {"requests": [], "held": []}
        self.plan: dict[str, Any] | None = None
        self.online = False
        self.history: dict[str, dict[str, deque[tuple[float, float]]]] = {}
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None

    # --- the MQTT side (paho's thread hands every message to the loop) ---

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"cellctl-panel-view-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,  # reads only: 3.1.1 is enough, amqtt too
        )
        if self.target.username:
            c.username_pw_set(self.target.username, self.target.password)
        tls = self.target.tls
        if tls is not None:
            c.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            if not tls.check_hostname:
                c.tls_insecure_set(True)
        c.reconnect_delay_set(1, 10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.connect_async(self.target.host, self.target.port, keepalive=30)
        c.loop_start()
        self._client = c

    def stop(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()
        for q in list(self._subscribers):
            q.put_nowait(None)

    def _on_connect(self, c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            log.warning("the panel's view of the cell: broker refused", reason=str(rc))
            return
        b = self.base
        topics = ["status", "cell", "plan", "devices/+/snapshot", "devices/+/samples",
                  "devices/+/state", "devices/+/progress"]  # fmt: skip
        c.subscribe([(f"{b}/{t}", 1 if t != "devices/+/samples" else 0) for t in topics])

    def _on_disconnect(self, c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._handle, f"{self.base}/$link", b"down")

    def _on_message(self, c: paho.Client, u: Any, m: paho.MQTTMessage) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._handle, m.topic, m.payload)

    # --- the view (event loop only) ---

    def whole(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "devices": self.devices,
            "cell": self.cell,
            "plan": self.plan,
            "history": {
                d: {name: list(points) for name, points in series.items()}
                for d, series in self.history.items()
            },
        }

    def subscribe(self) -> asyncio.Queue[Event | None]:
        q: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(q)

    def _publish(self, kind: str, data: Any) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait((kind, data))
            except asyncio.QueueFull:  # too slow: end its stream; the browser reconnects
                self._subscribers.discard(q)
                q.get_nowait()
                q.put_nowait(None)

    def _handle(self, topic: str, payload: bytes | bytearray) -> None:
        rel = topic[len(self.base) + 1 :]
        if rel == "$link":
            self.online = False
            self._publish("status", {"online": False})
            return
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            log.warning("the panel's view: not JSON", topic=topic)
            return
        parts = rel.split("/")
        if rel == "status":
            self.online = isinstance(body, dict) and body.get("state") == "online"
            self._publish("status", {"online": self.online})
        elif rel == "cell" and isinstance(body, dict):
            self.cell = body
            self._publish("cell", body)
        elif rel == "plan":
            self.plan = body if isinstance(body, dict) else None
            self._publish("plan", self.plan)
        elif len(parts) == 3 and parts[0] == "devices" and isinstance(body, dict):
            self._device(parts[1], parts[2], body)

    def _device(self, dev: str, kind: str, body: dict[str, Any]) -> None:
        snap = self.devices.get(dev)
        if kind == "snapshot":
            self.devices[dev] = snap = body
            for name, m in (body.get("metrics") or {}).items():
                self._remember(dev, name, m.get("value"), m.get("ts"))
        elif snap is None:
            return  # nothing to apply a change to until the snapshot arrives
        elif kind == "samples":
            metrics = snap.setdefault("metrics", {})
            for s in body.get("samples") or []:
                m = metrics.setdefault(s["name"], {})
                m.update(value=s.get("value"), quality=s.get("quality"), ts=s.get("ts"))
                self._remember(dev, s["name"], s.get("value"), s.get("ts"))
        elif kind == "state":
            snap.update(state=body.get("state"), reason=body.get("reason", snap.get("reason")))
        elif kind == "progress":
            snap["progress"] = {k: v for k, v in body.items() if k not in ("v", "ts", "device")}
        else:
            return
        self._publish("device", snap)

    def _remember(self, dev: str, name: str, value: Any, ts: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        when = float(ts) if isinstance(ts, int | float) else time.time()
        points = self.history.setdefault(dev, {}).setdefault(name, deque(maxlen=POINTS))
        if points and points[-1][0] >= when:
            return  # the same reading again (a snapshot repeats the last sample)
        points.append((when, float(value)))
        while points and points[0][0] < when - HISTORY_S:
            points.popleft()
