"""A stand-in for the daemon's side of `put_program` (the shared wire contract of issues
23 and 29), for the panel's tests on a branch where the daemon does not have it yet.

It answers `put_program` exactly as the contract says (chunks at offsets into a
file, `complete` once every byte is held and the SHA-256 matched, `sha256
mismatch` otherwise) and `submit` with a queued job, and records what it got.
It is a test double of the daemon's side, on a real broker: the panel's client
code under test is the real one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cellctl.telemetry.topics import Topics


@dataclass
class _Partial:
    size: int
    path: Path
    held: list[tuple[int, int]] = field(default_factory=list)

    def received(self) -> int:
        return sum(e - s for s, e in _merge(self.held))

    def missing(self) -> list[list[int]]:
        out, at = [], 0
        for s, e in _merge(self.held):
            if s > at:
                out.append([at, s])
            at = max(at, e)
        if at < self.size:
            out.append([at, self.size])
        return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class ProgramDouble:
    def __init__(self, port: int, topics: Topics, where: Path) -> None:
        self.topics = topics
        self.where = where
        self.stored: dict[str, Path] = {}
        self.partial: dict[str, _Partial] = {}
        self.chunks: list[tuple[str, int, int]] = []  # user, offset, bytes
        self.submits: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="program-double",
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self._ready.set()
        self.c.on_message = self._on_message
        self.port = port

    def start(self) -> ProgramDouble:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        assert self._ready.wait(10), "the double did not subscribe"
        return self

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def _on_connect(self, c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(f"{self.topics.base}/cmd/+/+", 1)

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        user, name = parts[-2], parts[-1]
        body = json.loads(msg.payload)
        try:
            if name == "put_program":
                result: Any = self._put(user, body)
            elif name == "submit":
                self.submits.append({"user": user, **body})
                result = {"id": body["job"], "state": "queued", "steps": body["steps"]}
            else:
                raise ValueError(f"unknown command {name!r}")
            outcome, reason = "accepted", ""
        except ValueError as exc:
            outcome, reason, result = "rejected", str(exc), None
        reply = {"v": 1, "ts": time.time(), "command": name, "id": body.get("id"),
                 "outcome": outcome, "reason": reason, "result": result}  # fmt: skip
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = msg.properties.CorrelationData
        c.publish(msg.properties.ResponseTopic, json.dumps(reply), qos=1, properties=props)

    def _put(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        sha, size, offset = body["sha256"], body["size"], body["offset"]
        ref = f"sha256:{sha}"
        if sha in self.stored:
            return {"program": ref, "received": size, "complete": True, "missing": []}
        data = base64.b64decode(body["data"])
        self.chunks.append((body.get("on_behalf_of", user), offset, len(data)))
        part = self.partial.setdefault(sha, _Partial(size, self.where / f"{sha}.part"))
        with part.path.open("r+b" if part.path.exists() else "wb") as f:
            f.seek(offset)
            f.write(data)
        part.held.append((offset, offset + len(data)))
        if part.received() < size:
            return {"program": ref, "received": part.received(), "complete": False,
                    "missing": part.missing()}  # fmt: skip
        del self.partial[sha]
        digest = hashlib.sha256()
        with part.path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != sha:
            part.path.unlink()
            raise ValueError(f"sha256 mismatch: the {size} bytes hash to {digest.hexdigest()}")
        self.stored[sha] = part.path.rename(self.where / sha)
        return {"program": ref, "received": size, "complete": True, "missing": []}
