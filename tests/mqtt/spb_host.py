"""A Sparkplug B host for tests, independent of cellctl's encoder.

Its payload classes are built here from the field table of the Sparkplug 3.0
specification (6.4 Payload Component Definitions) through protobuf's own descriptor
machinery (descriptor_pb2 → descriptor_pool → message_factory): no cellctl module,
no .proto file. It records every message under spBv1.0/# with its decoded payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mqtt_rig import Message, Subscriber

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
U32, U64, FLT, DBL, BOOL, STR, BYTES, MSG = (
    F.TYPE_UINT32,
    F.TYPE_UINT64,
    F.TYPE_FLOAT,
    F.TYPE_DOUBLE,
    F.TYPE_BOOL,
    F.TYPE_STRING,
    F.TYPE_BYTES,
    F.TYPE_MESSAGE,
)


def _message(parent: Any, name: str, fields: list[tuple[str, int, int, int, str, bool]]) -> Any:
    msg = parent.add(name=name)
    oneof_added = False
    for fname, number, label, ftype, type_name, in_oneof in fields:
        f = msg.field.add(name=fname, number=number, label=label, type=ftype)
        if type_name:
            f.type_name = type_name
        if in_oneof:
            if not oneof_added:
                msg.oneof_decl.add(name="value")
                oneof_added = True
            f.oneof_index = 0
    return msg


def _build() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="test_spb_host.proto", package="testhost", syntax="proto2"
    )
    p = _message(
        fdp.message_type,
        "Payload",
        [
            ("timestamp", 1, OPT, U64, "", False),
            ("metrics", 2, REP, MSG, ".testhost.Payload.Metric", False),
            ("seq", 3, OPT, U64, "", False),
            ("uuid", 4, OPT, STR, "", False),
            ("body", 5, OPT, BYTES, "", False),
        ],
    )
    _message(
        p.nested_type,
        "PropertyValue",
        [
            ("type", 1, OPT, U32, "", False),
            ("is_null", 2, OPT, BOOL, "", False),
            ("int_value", 3, OPT, U32, "", True),
            ("long_value", 4, OPT, U64, "", True),
            ("float_value", 5, OPT, FLT, "", True),
            ("double_value", 6, OPT, DBL, "", True),
            ("boolean_value", 7, OPT, BOOL, "", True),
            ("string_value", 8, OPT, STR, "", True),
        ],
    )
    _message(
        p.nested_type,
        "PropertySet",
        [
            ("keys", 1, REP, STR, "", False),
            ("values", 2, REP, MSG, ".testhost.Payload.PropertyValue", False),
        ],
    )
    _message(
        p.nested_type,
        "Metric",
        [
            ("name", 1, OPT, STR, "", False),
            ("alias", 2, OPT, U64, "", False),
            ("timestamp", 3, OPT, U64, "", False),
            ("datatype", 4, OPT, U32, "", False),
            ("is_historical", 5, OPT, BOOL, "", False),
            ("is_transient", 6, OPT, BOOL, "", False),
            ("is_null", 7, OPT, BOOL, "", False),
            ("properties", 9, OPT, MSG, ".testhost.Payload.PropertySet", False),
            ("int_value", 10, OPT, U32, "", True),
            ("long_value", 11, OPT, U64, "", True),
            ("float_value", 12, OPT, FLT, "", True),
            ("double_value", 13, OPT, DBL, "", True),
            ("boolean_value", 14, OPT, BOOL, "", True),
            ("string_value", 15, OPT, STR, "", True),
            ("bytes_value", 16, OPT, BYTES, "", True),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("testhost.Payload"))


PayloadClass = _build()


def decode(raw: bytes) -> Any:
    return PayloadClass.FromString(raw)


def value(m: Any) -> Any:
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    return None if which is None else getattr(m, which)


def properties(m: Any) -> dict[str, Any]:
    return {
        k: getattr(v, v.WhichOneof("value") or "is_null")
        for k, v in zip(m.properties.keys, m.properties.values, strict=True)
    }


def encode_cmd(metrics: list[tuple[str, bool]]) -> bytes:
    p = PayloadClass(timestamp=1)
    for name, b in metrics:
        m = p.metrics.add(name=name, datatype=11)
        m.boolean_value = b
    return bytes(p.SerializeToString())


def encode_values(metrics: list[tuple[str, int, str, Any]]) -> bytes:
    """A command payload of (name, datatype, value field, value) metrics."""
    p = PayloadClass(timestamp=1)
    for name, datatype, field_name, v in metrics:
        m = p.metrics.add(name=name, datatype=datatype)
        setattr(m, field_name, v)
    return bytes(p.SerializeToString())


@dataclass
class SpMsg:
    topic: str
    kind: str
    device: str | None
    payload: Any
    qos: int
    retain: bool

    @property
    def seq(self) -> int | None:
        return self.payload.seq if self.payload.HasField("seq") else None

    def metric(self, name: str) -> Any:
        for m in self.payload.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


class Host:
    """Subscribes to spBv1.0/# (QoS 1, so the broker's QoS is the publisher's) and decodes."""

    def __init__(self, port: int) -> None:
        self.sub = Subscriber(port, ["spBv1.0/#"], qos=1)
        self._qos: list[int] = []
        orig = self.sub._on_message

        def on_message(c: Any, u: Any, msg: Any) -> None:
            self._qos.append(msg.qos)
            orig(c, u, msg)

        self.sub.client.on_message = on_message

    async def start(self) -> Host:
        await self.sub.start()
        return self

    def stop(self) -> None:
        self.sub.stop()

    @property
    def messages(self) -> list[SpMsg]:
        out = []
        for i, m in enumerate(self.sub.messages):
            out.append(self._parse(m, self._qos[i] if i < len(self._qos) else -1))
        return out

    @staticmethod
    def _parse(m: Message, qos: int) -> SpMsg:
        parts = m.topic.split("/")
        if parts[1] == "STATE":
            return SpMsg(m.topic, "STATE", None, None, qos, m.retain)
        device = parts[4] if len(parts) > 4 else None
        return SpMsg(m.topic, parts[2], device, decode(m.payload), qos, m.retain)

    def of(self, kind: str, device: str | None = None) -> list[SpMsg]:
        return [
            m for m in self.messages if m.kind == kind and (device is None or m.device == device)
        ]

    async def wait(self, pred: Any, what: str, within_s: float = 15.0) -> None:
        await self.sub.wait_for(pred, what, within_s)


def seq_without_gaps(msgs: list[SpMsg]) -> None:
    """Every message but NDEATH has seq; NBIRTH starts at 0; each next is +1 mod 256."""
    last: int | None = None
    for m in msgs:
        if m.kind in ("NDEATH", "STATE", "NCMD", "DCMD"):
            continue
        assert m.seq is not None, m.topic
        if m.kind == "NBIRTH":
            assert m.seq == 0
        else:
            assert last is not None, f"{m.kind} before any NBIRTH"
            assert m.seq == (last + 1) % 256, f"{m.topic}: seq {m.seq} after {last}"
        last = m.seq


def births_before_data(msgs: list[SpMsg]) -> None:
    node_born = False
    born: set[str] = set()
    for m in msgs:
        if m.kind == "NBIRTH":
            node_born, born = True, set()
        elif m.kind == "NDEATH":
            node_born, born = False, set()
        elif m.kind == "DBIRTH":
            assert node_born, "DBIRTH before NBIRTH"
            born.add(m.device or "")
        elif m.kind == "DDEATH":
            born.discard(m.device or "")
        elif m.kind == "DDATA":
            assert m.device in born, f"DDATA of {m.device} before its DBIRTH"
            for metric in m.payload.metrics:
                assert not metric.HasField("name") and metric.HasField("alias")
