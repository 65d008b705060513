"""Sparkplug B datatypes and the building of protobuf metrics from cellctl values.

Datatype numbers are those of the specification (3.0, 6.4.16 "Data Types"); which
value field a datatype uses is 6.4.5 (Metric): 32-bit and smaller integers in
`int_value`, 64-bit in `long_value`, Double in `double_value`.
"""

from __future__ import annotations

import enum
import math
import time

from cellctl.model import MetricType, MetricValue, Quality
from cellctl.telemetry.sparkplug.sparkplug_b_pb2 import Payload as Payload

Metric = Payload.Metric


class DataType(enum.IntEnum):
    INT32 = 3
    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12


FROM_METRIC_TYPE = {
    MetricType.BOOL: DataType.BOOLEAN,
    MetricType.INT: DataType.INT64,
    MetricType.FLOAT: DataType.DOUBLE,
    MetricType.STRING: DataType.STRING,
}

# The "Quality" property (3.0, 6.4.13.1 "Quality Codes"): Int32, 0 BAD, 192 GOOD, 500 STALE.
# Sparkplug has no "uncertain": cellctl's uncertain (a value it could not refresh) is STALE.
QUALITY_CODE = {Quality.GOOD: 192, Quality.UNCERTAIN: 500, Quality.BAD: 0}


def now_ms() -> int:
    return int(time.time() * 1000)


def to_ms(seconds: float) -> int:
    return int(seconds * 1000)


def set_value(m: Metric, datatype: DataType, value: MetricValue | None) -> None:
    """Puts `value` into the field its datatype uses; None (or NaN as an integer) is null."""
    if value is None:
        m.is_null = True
        return
    if datatype == DataType.BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == DataType.STRING:
        m.string_value = str(value)
    elif datatype == DataType.DOUBLE:
        m.double_value = float(value)  # NaN and infinities are doubles too
    elif datatype == DataType.INT32:
        # Negative Int32 travel as their two's complement in the uint32 field (6.4.5).
        m.int_value = int(value) & 0xFFFFFFFF
    else:  # INT64, UINT64
        if isinstance(value, float) and not math.isfinite(value):
            m.is_null = True
            return
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF


def add_properties(m: Metric, props: dict[str, str | int]) -> None:
    """A PropertySet (6.4.12): strings as String, ints as Int32 (the Quality code)."""
    for key, value in props.items():
        m.properties.keys.append(key)
        pv = m.properties.values.add()
        if isinstance(value, int):
            pv.type = DataType.INT32
            pv.int_value = value & 0xFFFFFFFF
        else:
            pv.type = DataType.STRING
            pv.string_value = value
