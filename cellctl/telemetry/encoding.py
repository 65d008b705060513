"""Encodings turn cellctl's domain messages into MQTT messages (topic, payload, QoS, retain).

The publisher only knows the `Encoding` protocol, so a second encoding (Sparkplug B,
with its own topic tree and protobuf payloads) plugs in beside `JsonEncoding`
without touching the spool, the link or the policy code. Every JSON payload
carries `"v"` (the payload version, see cellctl/schemas/) and every event a
per-source `"seq"`, so that a subscriber can drop QoS 1 duplicates and see gaps.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cellctl.model import Alarm, OperatorRequest, Sample, StateChanged, StepProgress
from cellctl.telemetry.samplejson import SampleJson
from cellctl.telemetry.snapshot import CellSnapshot, DeviceSnapshot, cell_dict, device_dict
from cellctl.telemetry.topics import Topics

PAYLOAD_VERSION = 1


def _envelope(src: str, seq: int, ts: float) -> dict[str, Any]:
    """What every event payload starts with: version, source and its sequence number, time."""
    return {"v": PAYLOAD_VERSION, "src": src, "seq": seq, "ts": ts}


class Kind(enum.StrEnum):
    """What a message is; decides its spooling and the schema it follows."""

    STATUS = "status"
    SPOOL = "spool"
    STATE = "state"
    SAMPLES = "samples"
    PROGRESS = "progress"
    ALARM = "alarm"
    REQUEST = "request"
    JOB = "job"
    AUDIT = "audit"
    REPLY = "reply"
    SNAPSHOT = "snapshot"
    CELL = "cell"
    PLAN = "plan"
    PLAN_PROBLEM = "plan_problem"
    REPORT = "report"

    @property
    def is_event(self) -> bool:
        """Events go through the spool with QoS 1 and are never dropped."""
        return self in _EVENTS


_EVENTS = frozenset({Kind.STATE, Kind.ALARM, Kind.REQUEST, Kind.JOB, Kind.AUDIT})


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    kind: Kind
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job or step transition, as the job service reports it."""

    job_id: str
    event: str  # e.g. "accepted", "step_started", "step_done", "cancelled", "done"
    state: str = ""
    step: int | None = None
    device_id: str | None = None
    detail: str = ""
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    command: str
    request_id: str | None
    origin: Mapping[str, Any]
    outcome: str  # "accepted" | "rejected"
    reason: str = ""
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int
    dropped_samples: int
    dropped_offline: int
    dropped_disk_full: int = 0
    timestamp: float = field(default_factory=time.time)


class Encoding(Protocol):
    """How cellctl's messages look on the wire. `seq` is the per-source sequence number."""

    name: str

    def status(self, online: bool, reason: str, boot: str) -> Outgoing: ...
    def state(self, ev: StateChanged, seq: int) -> Outgoing: ...
    def samples(self, device_id: str, samples: Sequence[Sample], qos: int) -> Outgoing: ...
    def progress(self, ev: StepProgress) -> Outgoing: ...
    def alarm(self, ev: Alarm, seq: int) -> Outgoing: ...
    def request(self, ev: OperatorRequest, seq: int) -> Outgoing: ...
    def job(self, ev: JobEvent, seq: int) -> Outgoing: ...
    def audit(self, rec: AuditRecord, seq: int) -> Outgoing: ...
    def spool(self, stats: SpoolStats) -> Outgoing: ...
    def device_snapshot(self, snap: DeviceSnapshot) -> Outgoing: ...
    def cell(self, snap: CellSnapshot) -> Outgoing: ...


def dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class JsonEncoding:
    """Versioned JSON payloads, one topic tree (cellctl.telemetry.topics)."""

    name = "json"

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._samples_json = SampleJson(PAYLOAD_VERSION)
        self._samples_topics: dict[str, str] = {}

    def status(self, online: bool, reason: str, boot: str) -> Outgoing:
        body = {
            "v": PAYLOAD_VERSION,
            "state": "online" if online else "offline",
            "reason": reason,
            "boot": boot,
            "ts": time.time(),
        }
        return Outgoing(self.topics.status, dumps(body), Kind.STATUS, qos=1, retain=True)

    def state(self, ev: StateChanged, seq: int) -> Outgoing:
        body = {
            **_envelope(ev.device_id, seq, ev.timestamp),
            "device": ev.device_id,
            "state": ev.state.label,
            "code": int(ev.state),
            "previous": ev.previous.label,
            "reason": ev.reason,
        }
        topic = self.topics.state(ev.device_id)
        return Outgoing(topic, dumps(body), Kind.STATE, qos=1, retain=True)

    def samples(self, device_id: str, samples: Sequence[Sample], qos: int) -> Outgoing:
        topic = self._samples_topics.get(device_id)
        if topic is None:
            topic = self._samples_topics[device_id] = self.topics.samples(device_id)
        payload = self._samples_json.encode(device_id, samples, time.time())
        return Outgoing(topic, payload, Kind.SAMPLES, qos=qos)

    def progress(self, ev: StepProgress) -> Outgoing:
        p = ev.progress
        body = {
            "v": PAYLOAD_VERSION,
            "ts": ev.timestamp,
            "device": ev.device_id,
            "step": ev.step_key,
            "fraction": p.fraction,
            "lines_done": p.lines_done,
            "last_acked_line": p.last_acked_line,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "remaining_s": p.remaining_s,
        }
        return Outgoing(self.topics.progress(ev.device_id), dumps(body), Kind.PROGRESS)

    def alarm(self, ev: Alarm, seq: int) -> Outgoing:
        body = {
            **_envelope(ev.device_id, seq, ev.timestamp),
            "device": ev.device_id,
            "code": ev.code,
            "text": ev.text,
            "active": ev.active,
        }
        return Outgoing(self.topics.alarms(ev.device_id), dumps(body), Kind.ALARM, qos=1)

    def request(self, ev: OperatorRequest, seq: int) -> Outgoing:
        body = {
            **_envelope(ev.device_id, seq, ev.timestamp),
            "device": ev.device_id,
            "kind": ev.kind.value,
            "text": ev.text,
            "step": ev.step_key,
            "details": dict(ev.details),
        }
        return Outgoing(self.topics.requests(ev.device_id), dumps(body), Kind.REQUEST, qos=1)

    def job(self, ev: JobEvent, seq: int) -> Outgoing:
        body = {
            **_envelope("jobs", seq, ev.timestamp),
            "job": ev.job_id,
            "event": ev.event,
            "state": ev.state,
            "step": ev.step,
            "device": ev.device_id,
            "detail": ev.detail,
        }
        return Outgoing(self.topics.job(ev.job_id), dumps(body), Kind.JOB, qos=1)

    def audit(self, rec: AuditRecord, seq: int) -> Outgoing:
        body = {
            **_envelope("audit", seq, rec.timestamp),
            "command": rec.command,
            "id": rec.request_id,
            "origin": dict(rec.origin),
            "outcome": rec.outcome,
            "reason": rec.reason,
        }
        return Outgoing(self.topics.audit, dumps(body), Kind.AUDIT, qos=1)

    def spool(self, stats: SpoolStats) -> Outgoing:
        body = {
            "v": PAYLOAD_VERSION,
            "ts": stats.timestamp,
            "depth": stats.depth,
            "dropped_samples": stats.dropped_samples,
            "dropped_offline": stats.dropped_offline,
            "dropped_disk_full": stats.dropped_disk_full,
        }
        return Outgoing(self.topics.spool, dumps(body), Kind.SPOOL, qos=1, retain=True)

    def device_snapshot(self, snap: DeviceSnapshot) -> Outgoing:
        body = {"v": PAYLOAD_VERSION, "ts": time.time(), **device_dict(snap)}
        topic = self.topics.snapshot(snap.device)
        return Outgoing(topic, dumps(body), Kind.SNAPSHOT, qos=1, retain=True)

    def cell(self, snap: CellSnapshot) -> Outgoing:
        body = {"v": PAYLOAD_VERSION, "ts": time.time(), **cell_dict(snap)}
        return Outgoing(self.topics.cell_snapshot, dumps(body), Kind.CELL, qos=1, retain=True)
