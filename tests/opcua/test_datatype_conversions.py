"""The conversions to OPC UA built-in types, as pure logic (no server)."""

from __future__ import annotations

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary
from cellctl_drivers.opcua.boundary import TypeMismatch
from cellctl_drivers.opcua.datatypes import INT_RANGES, coerce, next_beat, to_variant

INT_TYPES = ["SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64"]


@pytest.mark.parametrize("name", [*INT_TYPES, "UInt64"])
def test_every_integer_type_takes_its_range_and_refuses_beyond(name: str) -> None:
    vtype = ua.VariantType.__members__[name]
    lo, hi = INT_RANGES[vtype]
    for ok in (lo, hi, 0 if lo == 0 else -1, True, 7.0):
        variant = to_variant(ok, vtype, "w")
        assert variant.VariantType == vtype
        variant_to_binary(variant)  # encodes: the server will get exactly this type
    for bad in (lo - 1, hi + 1):
        with pytest.raises(TypeMismatch, match=f"{bad} does not fit {name} \\({lo}\\.\\.{hi}\\)"):
            coerce(bad, vtype, "w")
    for bad in (2.5, "7", float("nan")):
        with pytest.raises(TypeMismatch, match="not a whole number"):
            coerce(bad, vtype, "w")


def test_booleans_floats_and_strings_are_strict() -> None:
    v = ua.VariantType
    assert coerce(1, v.Boolean, "w") is True and coerce(False, v.Boolean, "w") is False
    assert coerce(3, v.Float, "w") == 3.0 and coerce(-1e300, v.Double, "w") == -1e300
    for value, vtype, why in (
        (2, v.Boolean, "not a Boolean"),
        ("yes", v.Boolean, "not a Boolean"),
        (True, v.Double, "not a number"),
        (4e38, v.Float, "does not fit Float"),
        (5, v.String, "not a String"),
        (1, v.DateTime, "the server declares DateTime"),
    ):
        with pytest.raises(TypeMismatch, match=why):
            coerce(value, vtype, "w")


@pytest.mark.parametrize("name", INT_TYPES)
def test_next_beat_counts_to_the_top_and_wraps_to_zero(name: str) -> None:
    vtype = ua.VariantType.__members__[name]
    hi = INT_RANGES[vtype][1]
    assert next_beat(0, vtype) == 1 and next_beat(hi - 1, vtype) == hi
    assert next_beat(hi, vtype) == 0
    # After a reconnect to a node of a smaller type, a beat out of its range restarts.
    assert next_beat(hi + 5, vtype) == 0 and next_beat(-3, vtype) == 0


def test_next_beat_toggles_a_boolean_and_refuses_a_string() -> None:
    assert next_beat(False, ua.VariantType.Boolean) is True
    assert next_beat(True, ua.VariantType.Boolean) is False
    assert next_beat(2.0**24, ua.VariantType.Float) == 0.0
    with pytest.raises(TypeMismatch):
        next_beat(0, ua.VariantType.String)
