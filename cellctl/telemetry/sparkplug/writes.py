"""DCMD writes to a driver's writable tags: allowed only where the config says so.

Sparkplug topics carry no user (the broker's ACL decides who may publish DCMD), and a
tag write moves real equipment, so nothing is writable over Sparkplug unless
`[mqtt.sparkplug] write_tags` names it (`<device>/<tag>` patterns, `*` matches).
The driver must declare the metric `writable` and offer `write_tag(name, value)`
(the Modbus and OPC UA drivers do).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cellctl.model import MetricValue
from cellctl.telemetry.sparkplug.payload import DataType, Metric


@runtime_checkable
class SupportsWriteTag(Protocol):
    async def write_tag(self, name: str, value: MetricValue) -> None: ...


def allowed(patterns: Sequence[str], device: str, tag: str) -> bool:
    return any(fnmatch.fnmatchcase(f"{device}/{tag}", p) for p in patterns)


def value_for(m: Metric, datatype: DataType) -> MetricValue | None:
    """The DCMD metric's value as the tag's datatype wants it, or None if it cannot be."""
    which = m.WhichOneof("value")
    if which is None or m.is_null:
        return None
    raw = getattr(m, which)
    if datatype == DataType.BOOLEAN:
        return raw if which == "boolean_value" else None
    if datatype == DataType.STRING:
        return raw if which == "string_value" else None
    if datatype == DataType.DOUBLE:
        if which in ("double_value", "float_value", "int_value", "long_value"):
            value = float(raw)
            return value if math.isfinite(value) else None
        return None
    if which == "long_value":  # Int64: two's complement in a uint64
        return int(raw) - (1 << 64) if raw >= 1 << 63 else int(raw)
    if which == "int_value":
        return int(raw) - (1 << 32) if raw >= 1 << 31 else int(raw)
    return None
