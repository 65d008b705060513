"""The edge node's rules, without I/O: topics, `seq`, `bdSeq`, aliases, births and deaths.

Each rule cites Eclipse Sparkplug 3.0 (its tck-id where it has one):
- NDEATH is the MQTT will: QoS 1, not retained, one metric `bdSeq` (Int64)
  (message-flow-edge-node-birth-publish-will-message-*). NBIRTH carries the same
  `bdSeq` (…-nbirth-payload-bdSeq); a rebirth keeps it (data-commands-rebirth-action-3).
- NBIRTH has `seq` 0 here (…-nbirth-payload-seq allows 0–255; 0 is what every host
  expects); every later message of the node, NDATA, DBIRTH, DDATA and DDEATH alike,
  has the previous `seq` + 1, wrapping 255 → 0 (6.4.1, "seq"). NDEATH has none.
- NBIRTH, NDATA, DBIRTH, DDATA, DDEATH: QoS 0, not retained (…-nbirth-qos/-retained,
  device-birth-publish-dbirth-qos/-retained; 6.4.x for DDEATH gives no QoS: 0 is taken).
- Births name every metric with its datatype and current value; an alias is given to
  each at birth and DATA messages carry only the alias (6.4.5 "alias"; 5.20 "Data
  Publish"). Aliases are unique in the edge node and stay the same across rebirths.
- DBIRTH only after the NBIRTH of the session (device-birth-publish-nbirth-wait);
  DATA of a device only after its DBIRTH (data-publish-dbirth-order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cellctl.model import MetricValue, Quality
from cellctl.telemetry.encoding import Kind, Outgoing
from cellctl.telemetry.sparkplug.catalog import BDSEQ, NODE_METRICS, MetricDef
from cellctl.telemetry.sparkplug.payload import (
    QUALITY_CODE,
    DataType,
    Payload,
    add_properties,
    now_ms,
    set_value,
)

NAMESPACE = "spBv1.0"
SEQ_MODULO = 256
BDSEQ_MODULO = 256


@dataclass(frozen=True, slots=True)
class Change:
    """A metric's new value at its source time (Unix ms)."""

    name: str
    value: MetricValue | None
    timestamp_ms: int
    quality: Quality = Quality.GOOD
    # The quality differs from the last one sent: the DATA says it even when good again.
    requalified: bool = False


@dataclass
class _Owner:
    """The edge node itself (device None) or one device: its metrics and current values."""

    defs: dict[str, MetricDef] = field(default_factory=dict)
    values: dict[str, Change] = field(default_factory=dict)
    born: bool = False


@dataclass(frozen=True, slots=True)
class Historical:
    device: str | None
    changes: tuple[Change, ...]


@dataclass
class SessionStats:
    births: int = 0
    data: int = 0
    deaths: int = 0
    history_dropped: int = 0
    unknown_dropped: int = 0


class EdgeNode:
    def __init__(self, group_id: str, edge_node_id: str, history_max: int = 0) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.bdseq = 0
        self.seq = 0  # the seq of the next message
        self.node = _Owner({m.name: m for m in NODE_METRICS})
        self.devices: dict[str, _Owner] = {}
        self._aliases: dict[tuple[str | None, str], int] = {}
        self.history: deque[Historical] = deque()
        self._kept = 0  # changes in `history`
        self.history_max = history_max
        self.stats = SessionStats()

    # --- topics (3.0, 4.1: spBv1.0/<group_id>/<type>/<edge_node_id>[/<device_id>]) ---

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    @property
    def command_topics(self) -> list[str]:
        """NCMD (QoS 1, before NBIRTH: edge-node-ncmd-subscribe) and every device's DCMD."""
        return [self.topic("NCMD"), self.topic("DCMD", "+")]

    @property
    def born(self) -> bool:
        return self.node.born

    def alias(self, device: str | None, name: str) -> int:
        key = (device, name)
        found = self._aliases.get(key)
        if found is None:
            found = self._aliases[key] = len(self._aliases) + 1
        return found

    def name_of(self, device: str | None, alias: int) -> str | None:
        for (dev, name), a in self._aliases.items():
            if a == alias and dev == device:
                return name
        return None

    # --- the node's session ----------------------------------------------------

    def will(self, bdseq: int) -> Outgoing:
        """The NDEATH for the next CONNECT, which takes `bdseq` for its session."""
        self.bdseq = bdseq % BDSEQ_MODULO
        return self._ndeath()

    def _ndeath(self) -> Outgoing:
        p = Payload(timestamp=now_ms())
        m = p.metrics.add(name=BDSEQ, datatype=DataType.INT64, timestamp=p.timestamp)
        m.long_value = self.bdseq
        return Outgoing(self.topic("NDEATH"), p.SerializeToString(), Kind.STATUS, qos=1)

    def ndeath(self) -> Outgoing:
        """The NDEATH the node publishes itself before a clean DISCONNECT (5.5)."""
        self.lost()
        self.stats.deaths += 1
        return self._ndeath()

    def lost(self) -> None:
        """The MQTT session ended: nothing is born any more; values are kept for the next."""
        self.node.born = False
        for dev in self.devices.values():
            dev.born = False

    def nbirth(self, values: Mapping[str, MetricValue]) -> Outgoing:
        """NBIRTH with seq 0 (also on a rebirth, keeping bdSeq); device births follow."""
        self.lost()
        ts = now_ms()
        for name, value in values.items():
            if name in self.node.defs:
                self.node.values[name] = Change(name, value, ts)
        self.node.values[BDSEQ] = Change(BDSEQ, self.bdseq, ts)
        self.seq = 0
        out = self._birth("NBIRTH", None, self.node)
        self.node.born = True
        return out

    # --- devices ----------------------------------------------------------------

    def define(self, device: str, defs: Sequence[MetricDef]) -> None:
        """What `device` has (before its DBIRTH); values of metrics it keeps are kept."""
        owner = self.devices.setdefault(device, _Owner())
        owner.defs = {m.name: m for m in defs}
        owner.values = {k: v for k, v in owner.values.items() if k in owner.defs}

    def device_born(self, device: str) -> bool:
        dev = self.devices.get(device)
        return dev is not None and dev.born

    def dbirth(self, device: str, changes: Iterable[Change] = ()) -> Outgoing:
        owner = self.devices[device]
        for c in changes:
            if c.name in owner.defs:
                owner.values[c.name] = c
        out = self._birth("DBIRTH", device, owner)
        owner.born = True
        return out

    def ddeath(self, device: str) -> Outgoing | None:
        owner = self.devices.get(device)
        if owner is None or not owner.born:
            return None
        owner.born = False
        self.stats.deaths += 1
        p = Payload(timestamp=now_ms(), seq=self._next_seq())
        return Outgoing(self.topic("DDEATH", device), p.SerializeToString(), Kind.STATE)

    # --- data ---------------------------------------------------------------------

    def update(self, device: str | None, changes: Iterable[Change]) -> list[Change]:
        """Records new values; returns those that differ from the last (report by exception).

        Metrics the birth did not name are dropped and counted: a host would reject them."""
        owner = self.node if device is None else self.devices.get(device)
        if owner is None:
            return []
        out = []
        for c in changes:
            if c.name not in owner.defs:
                self.stats.unknown_dropped += 1
                continue
            last = owner.values.get(c.name)
            if last is not None and last.value == c.value and last.quality == c.quality:
                continue
            if last is not None and last.quality != c.quality:
                c = replace(c, requalified=True)
            owner.values[c.name] = c
            out.append(c)
        return out

    def data(
        self, device: str | None, changes: Sequence[Change], historical: bool = False
    ) -> Outgoing | None:
        """NDATA/DDATA of `changes` (already judged as changes), aliases only."""
        owner = self.node if device is None else self.devices.get(device)
        if not changes or owner is None or not owner.born or not self.node.born:
            return None
        p = Payload(timestamp=now_ms(), seq=self._next_seq())
        for c in changes:
            d = owner.defs[c.name]
            # The datatype although 6.4.5 says it SHOULD NOT be in NDATA/DDATA (the birth
            # gave it): decoders that keep no alias table (pysparkplug 0.6 among them)
            # cannot read a value without it. Two bytes a metric.
            m = p.metrics.add(alias=self.alias(device, c.name), timestamp=c.timestamp_ms)
            m.datatype = d.datatype
            if historical:
                m.is_historical = True
            set_value(m, d.datatype, c.value)
            if c.quality != Quality.GOOD or c.requalified:
                add_properties(m, {"Quality": QUALITY_CODE[c.quality]})
        self.stats.data += 1
        kind = "NDATA" if device is None else "DDATA"
        return Outgoing(self.topic(kind, device), p.SerializeToString(), Kind.SAMPLES)

    def keep(self, device: str | None, changes: Sequence[Change]) -> Historical | None:
        """Not born: keep the changes for after the next births (store and forward, 5.x).
        Returns what was kept (None: nothing), for the copy on disk (history.py)."""
        if not changes or self.history_max <= 0:
            return None
        entry = Historical(device, tuple(changes))
        self.history.append(entry)
        self._kept += len(entry.changes)
        while self._kept > self.history_max:
            dropped = self.history.popleft()
            self._kept -= len(dropped.changes)
            self.stats.history_dropped += len(dropped.changes)
        return entry

    def restore(self, entries: Iterable[Historical]) -> None:
        """What a previous run kept (history.py), before anything new."""
        for entry in entries:
            self.keep(entry.device, entry.changes)

    def forward(self) -> list[Outgoing]:
        """What was kept, as historical DATA in the order it happened (after the births)."""
        out = []
        self._kept = 0
        while self.history:
            h = self.history.popleft()
            owner = self.node if h.device is None else self.devices.get(h.device)
            if owner is None or not owner.born:
                self.stats.history_dropped += len(h.changes)
                continue
            msg = self.data(h.device, [c for c in h.changes if c.name in owner.defs], True)
            if msg is not None:
                out.append(msg)
        return out

    # --- building -------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (seq + 1) % SEQ_MODULO
        return seq

    def _birth(self, kind: str, device: str | None, owner: _Owner) -> Outgoing:
        ts = now_ms()
        p = Payload(timestamp=ts, seq=self._next_seq())
        for d in owner.defs.values():
            m = p.metrics.add(name=d.name, datatype=d.datatype)
            if d.name != BDSEQ:
                m.alias = self.alias(device, d.name)
            current = owner.values.get(d.name)
            m.timestamp = current.timestamp_ms if current is not None else ts
            if current is None:
                set_value(m, d.datatype, _default(d.datatype) if d.writable else None)
            else:
                set_value(m, d.datatype, current.value)
            props: dict[str, str | int] = {}
            if d.unit:
                props["engUnit"] = d.unit  # the property name Sparkplug hosts read units from
            if d.description:
                props["description"] = d.description
            if d.writable:
                props["writable"] = "true"
            if current is not None and current.quality != Quality.GOOD:
                props["Quality"] = QUALITY_CODE[current.quality]
            if props:
                add_properties(m, props)
        self.stats.births += 1
        return Outgoing(self.topic(kind, device), p.SerializeToString(), Kind.STATE)


def _default(datatype: DataType) -> MetricValue:
    """A writable metric's value at birth (Node Control/Rebirth is false: 5.18)."""
    if datatype == DataType.BOOLEAN:
        return False
    if datatype == DataType.STRING:
        return ""
    return 0
