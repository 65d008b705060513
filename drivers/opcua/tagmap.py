"""The tag map at run time: OPC UA values → samples, and the hand-over of samples
from the client thread to the daemon's loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from asyncua import ua

from cellctl.model import MetricType, MetricValue, Quality, Sample

from .options import OpcUaOptions

VARIANT_FOR: dict[MetricType, ua.VariantType] = {
    MetricType.BOOL: ua.VariantType.Boolean,
    MetricType.INT: ua.VariantType.Int32,
    MetricType.FLOAT: ua.VariantType.Double,
    MetricType.STRING: ua.VariantType.String,
}
DEFAULT: dict[MetricType, MetricValue] = {
    MetricType.BOOL: False,
    MetricType.INT: 0,
    MetricType.FLOAT: 0.0,
    MetricType.STRING: "",
}
_UTC = datetime.UTC


def quality(dv: ua.DataValue) -> Quality:
    sc = dv.StatusCode
    if sc is None or sc.is_good():
        return Quality.GOOD
    if sc.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def timestamp(dv: ua.DataValue) -> float:
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    if stamp is None:
        return time.time()
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_UTC)
    return stamp.timestamp()


def convert(kind: MetricType, value: Any) -> MetricValue:
    if kind == MetricType.BOOL:
        return bool(value)
    if kind == MetricType.INT:
        return int(value)
    if kind == MetricType.FLOAT:
        return float(value)
    return str(value)


class TagMap:
    """Which tags are read how, and DataValue → Sample. Used on the client thread only.

    Remembers each tag's last value, so that a bad-quality sample carries it on
    (a BAD sample still needs a value of the right type)."""

    def __init__(self, options: OpcUaOptions, log: Any) -> None:
        self.o = options
        self.log = log
        self.metric_tags = {n: t for n, t in options.tags.items() if t.read != "none"}
        self.poll_tags = [n for n, t in options.tags.items() if t.read == "poll"]
        self.sub_tags = [n for n, t in options.tags.items() if t.read == "subscribe"]
        self._types = {n: t.type for n, t in options.tags.items()}
        self._last: dict[str, MetricValue] = {}

    def sample(self, name: str, dv: ua.DataValue) -> Sample:
        kind = self._types[name]
        q = quality(dv)
        raw = dv.Value.Value if dv.Value is not None else None
        if raw is None or q == Quality.BAD:
            value = self._last.get(name, DEFAULT[kind])
            if q == Quality.GOOD:
                q = Quality.BAD
        else:
            try:
                value = convert(kind, raw)
            except (TypeError, ValueError):
                self.log.warning("tag value of the wrong type", tag=name, value=repr(raw)[:80])
                value, q = DEFAULT[kind], Quality.BAD
            else:
                self._last[name] = value
        return Sample(name, value, timestamp(dv), q)


class Coalescer:
    """Samples from the client thread to the daemon's loop, one wake-up per batch.

    The client thread `put()`s samples as publish responses arrive; the first put
    after a delivery schedules one callback on the daemon's loop, later puts join
    the pending batch (latest sample per tag) until that callback has taken it.
    So the daemon's loop wakes once per batch, never per item, and when it is
    busy the batches grow instead of the callbacks piling up. `close()` (daemon's
    loop) stops delivery for good: a dead session's values never arrive late."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Sample]], None]
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: dict[str, Sample] = {}
        self._scheduled = False
        self.closed = False
        self.batches = 0  # deliveries so far (benchmarks, tests)

    def put(self, samples: Iterable[Sample]) -> None:
        """Client thread."""
        with self._lock:
            pending = self._pending
            for s in samples:
                old = pending.get(s.name)
                if old is None or s.timestamp >= old.timestamp:
                    pending[s.name] = s
            if self._scheduled or not pending:
                return
            self._scheduled = True
        # The daemon's loop may be gone already at shutdown: nobody left to deliver to.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """Daemon's loop."""
        with self._lock:
            batch, self._pending = self._pending, {}
            self._scheduled = False
        if batch and not self.closed:
            self.batches += 1
            self._deliver(list(batch.values()))

    def close(self) -> None:
        """Daemon's loop."""
        self.closed = True
