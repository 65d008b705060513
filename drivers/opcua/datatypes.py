"""OPC UA built-in types as the driver writes them: a value from config or a step → the
Variant the server declares for the node or method argument (or a clear error), and the
next heartbeat value of a node's type.

Servers differ in what they accept: asyncua takes a write of the wrong Variant type with
`BadTypeMismatch`, node-opcua refuses method arguments the same way, and a value that
does not fit its type cannot even be encoded. So the type comes from the server (read once
at connect), never from the Python value.
"""

from __future__ import annotations

import math
from typing import Any

from asyncua import ua

from cellctl.model import MetricValue

from .boundary import TypeMismatch

_V = ua.VariantType

INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    _V.SByte: (-(2**7), 2**7 - 1),
    _V.Byte: (0, 2**8 - 1),
    _V.Int16: (-(2**15), 2**15 - 1),
    _V.UInt16: (0, 2**16 - 1),
    _V.Int32: (-(2**31), 2**31 - 1),
    _V.UInt32: (0, 2**32 - 1),
    _V.Int64: (-(2**63), 2**63 - 1),
    _V.UInt64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
# Whole numbers a Float holds exactly: a Float heartbeat counts up to here, then wraps.
_FLOAT_COUNT = 2**24

WRITABLE = (*INT_RANGES, _V.Boolean, _V.Float, _V.Double, _V.String)
HEARTBEAT = (*INT_RANGES, _V.Boolean, _V.Float, _V.Double)


def guess(value: MetricValue) -> ua.VariantType:
    """The type for a value when the server does not say (an abstract DataType)."""
    if isinstance(value, bool):
        return _V.Boolean
    if isinstance(value, int):
        return _V.Int32
    if isinstance(value, float):
        return _V.Double
    return _V.String


def coerce(value: MetricValue, vtype: ua.VariantType, what: str) -> Any:
    """`value` as a Python value of `vtype`; TypeMismatch when it does not fit."""
    name = vtype.name
    if vtype in INT_RANGES:
        if isinstance(value, bool):
            n = int(value)  # a PLC's request "bit" is often an integer
        elif isinstance(value, int):
            n = value
        elif isinstance(value, float) and value.is_integer():
            n = int(value)
        else:
            raise TypeMismatch(f"{what}: {value!r} is not a whole number ({name} expected)")
        lo, hi = INT_RANGES[vtype]
        if not lo <= n <= hi:
            raise TypeMismatch(f"{what}: {n} does not fit {name} ({lo}..{hi})")
        return n
    if vtype == _V.Boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeMismatch(f"{what}: {value!r} is not a Boolean (true/false, 0/1)")
    if vtype in (_V.Float, _V.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeMismatch(f"{what}: {value!r} is not a number ({name} expected)")
        f = float(value)
        if vtype == _V.Float and math.isfinite(f) and abs(f) > FLOAT32_MAX:
            raise TypeMismatch(f"{what}: {value!r} does not fit Float (32-bit, ±3.4e38)")
        return f
    if vtype == _V.String:
        if isinstance(value, str):
            return value
        raise TypeMismatch(f"{what}: {value!r} is not a String")
    raise TypeMismatch(
        f"{what}: the server declares {name}; cellctl writes " + ", ".join(t.name for t in WRITABLE)
    )


def to_variant(value: MetricValue, vtype: ua.VariantType | None, what: str) -> ua.Variant:
    vtype = vtype or guess(value)
    return ua.Variant(coerce(value, vtype, what), vtype)


def next_beat(previous: MetricValue, vtype: ua.VariantType) -> MetricValue:
    """The heartbeat after `previous`: a Boolean toggles; a number counts up from 0 and
    wraps to 0 after the largest value of its type, so every beat is a change."""
    if vtype == _V.Boolean:
        return not previous
    n = int(previous) if isinstance(previous, int | float) and not isinstance(previous, bool) else 0
    if vtype in INT_RANGES:
        top = INT_RANGES[vtype][1]
    elif vtype in (_V.Float, _V.Double):
        top = _FLOAT_COUNT
    else:
        raise TypeMismatch(f"a {vtype.name} node cannot carry a heartbeat (integer or Boolean)")
    following = n + 1 if 0 <= n < top else 0
    return float(following) if vtype in (_V.Float, _V.Double) else following
