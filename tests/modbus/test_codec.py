"""Encode/decode round-trips of every type × word order × byte order (hypothesis), plus
known layouts checked against hand-computed registers, plus the same through a real server."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from cellctl_drivers.modbus.codec import (
    INT_RANGES,
    DataType,
    EncodeError,
    Order,
    decode,
    encode,
    register_count,
)
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.options import ModbusOptions, Tag
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from cellctl_drivers.modbus.tags import decoder, value_from
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellctl.driver import DriverContext
from cellctl.errors import StepFailed

ORDERS = [(w, b) for w in Order for b in Order]
# Every type × order combination runs; a few dozen values each keeps the area fast.
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _values(dtype: DataType) -> st.SearchStrategy[Any]:
    if dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        return st.integers(lo, hi)
    if dtype == DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if dtype == DataType.FLOAT64:
        return st.floats(allow_nan=False)
    if dtype == DataType.BOOL:
        return st.booleans()
    raise AssertionError(dtype)


@pytest.mark.parametrize("word,byte", ORDERS)
@pytest.mark.parametrize("dtype", [t for t in DataType if t != DataType.STRING])
@FEW
@given(data=st.data())
def test_numbers_round_trip(dtype: DataType, word: Order, byte: Order, data: st.DataObject) -> None:
    value = data.draw(_values(dtype))
    words = encode(value, dtype, word, byte)
    assert len(words) == register_count(dtype)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, dtype, word, byte) == value


@pytest.mark.parametrize("word,byte", ORDERS)
@FEW
@given(
    length=st.integers(1, 40),
    text=st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF, exclude_categories=["Cs"])),
)
def test_strings_round_trip(word: Order, byte: Order, length: int, text: str) -> None:
    text = text.rstrip(" ")
    while len(text.encode()) > length:
        text = text[:-1].rstrip(" ")
    words = encode(text, DataType.STRING, word, byte, length)
    assert len(words) == (length + 1) // 2
    assert decode(words, DataType.STRING, word, byte, length) == text


@pytest.mark.parametrize("word,byte", ORDERS)
@FEW
@given(words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
def test_any_registers_decode_and_re_encode(word: Order, byte: Order, words: list[int]) -> None:
    """Whatever a PLC sends decodes without raising, and integers map back bit-exactly."""
    for dtype in (DataType.INT32, DataType.UINT32, DataType.FLOAT32):
        value = decode(words[:2], dtype, word, byte)
        if isinstance(value, float) and math.isnan(value):
            continue
        assert encode(value, dtype, word, byte) == words[:2]
    value64 = decode(words, DataType.FLOAT64, word, byte)
    assert isinstance(value64, float)


@pytest.mark.parametrize("word,byte", ORDERS)
@pytest.mark.parametrize("dtype", list(DataType))
@FEW
@given(data=st.data())
def test_the_polling_decoders_agree_with_the_codec(
    dtype: DataType, word: Order, byte: Order, data: st.DataObject
) -> None:
    """Polling decodes through per-tag decoders built once; they must read every
    layout exactly as codec.decode does, at any offset inside a merged answer."""
    spec: dict[str, Any] = {"table": "input", "address": 7, "type": dtype.value}
    spec |= {"word_order": word.value, "byte_order": byte.value}
    if dtype == DataType.STRING:
        spec["length"] = data.draw(st.integers(1, 20))
    if dtype == DataType.BOOL:
        spec["bit"] = data.draw(st.none() | st.integers(0, 15))
    elif dtype != DataType.STRING and data.draw(st.booleans()):
        spec |= {"scale": 0.1, "offset": -40.0}
    tag = Tag.model_validate(spec)
    options = ModbusOptions.model_validate({"tags": {"t": spec}})
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=tag.size, max_size=tag.size))
    before = data.draw(st.lists(st.integers(0, 0xFFFF), max_size=3))
    want = value_from(options, tag, words)
    got = decoder(options, tag)([*before, *words, 0xFFFF], len(before))
    assert type(got) is type(want)
    assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want))


def test_known_layouts() -> None:
    raw = struct.pack(">f", 1.5)  # 3F C0 00 00
    abcd = [0x3FC0, 0x0000]
    assert encode(1.5, DataType.FLOAT32) == abcd
    assert encode(1.5, DataType.FLOAT32, Order.LITTLE, Order.BIG) == [0x0000, 0x3FC0]  # CDAB
    assert encode(1.5, DataType.FLOAT32, Order.BIG, Order.LITTLE) == [0xC03F, 0x0000]  # BADC
    assert encode(1.5, DataType.FLOAT32, Order.LITTLE, Order.LITTLE) == [0x0000, 0xC03F]  # DCBA
    assert raw == bytes.fromhex("3fc00000")
    assert encode(-2, DataType.INT16) == [0xFFFE]
    assert encode(0x12345678, DataType.UINT32, Order.LITTLE) == [0x5678, 0x1234]
    assert encode("AB", DataType.STRING, length=3) == [0x4142, 0x0000]
    assert encode("AB", DataType.STRING, byte_order=Order.LITTLE, length=2) == [0x4241]
    assert decode([0x0004], DataType.BOOL, bit=2) is True


@pytest.mark.parametrize(
    "value,dtype",
    [
        (70000, DataType.UINT16),
        (-1, DataType.UINT32),
        (2**31, DataType.INT32),
        ("x", DataType.INT16),
    ],
)
def test_values_that_do_not_fit_are_refused(value: Any, dtype: DataType) -> None:
    with pytest.raises(EncodeError):
        encode(value, dtype)
    with pytest.raises(EncodeError):
        encode("too long", DataType.STRING, length=4)


# --- the same through a real pymodbus server, scaled, via the driver's tags -----------

_TYPES = [
    ("int16", -12345),
    ("uint16", 54321),
    ("int32", -2_000_000_000),
    ("uint32", 4_000_000_000),
    ("float32", -273.25),
    ("float64", 6.02214076e23),
]


def _scratch_options() -> ModbusOptions:
    tags: dict[str, Any] = {}
    address = 1000
    for word in ("big", "little"):
        for byte in ("big", "little"):
            for dtype, _ in _TYPES:
                name = f"{dtype}_{word}_{byte}"
                tags[name] = {
                    "table": "holding",
                    "address": address,
                    "type": dtype,
                    "word_order": word,
                    "byte_order": byte,
                    "writable": True,
                }
                address += register_count(DataType(dtype))
            tags[f"text_{word}_{byte}"] = {
                "table": "holding",
                "address": address,
                "type": "string",
                "length": 11,
                "byte_order": byte,
                "writable": True,
            }
            address += 6
    tags["scaled"] = {
        "table": "holding",
        "address": address,
        "type": "int16",
        "scale": 0.1,
        "offset": -40,
        "writable": True,
        "unit": "°C",
    }
    return ModbusOptions.model_validate({"tags": tags, "max_gap": 0})


async def test_every_type_round_trips_through_a_real_server() -> None:
    options = _scratch_options()
    async with PlcSim(PlcSimOptions()) as sim:
        driver = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), options)
        async with driver:
            for word in ("big", "little"):
                for byte in ("big", "little"):
                    for dtype, value in _TYPES:
                        name = f"{dtype}_{word}_{byte}"
                        await driver.write_tag(name, value)
                        got = await driver.read_tag(name)
                        if dtype == "float32":
                            assert got == struct.unpack(">f", struct.pack(">f", value))[0]
                        else:
                            assert got == value, name
                    await driver.write_tag(f"text_{word}_{byte}", "clamp ✓")
                    assert await driver.read_tag(f"text_{word}_{byte}") == "clamp ✓"
            await driver.write_tag("scaled", 21.5)
            assert await driver.read_tag("scaled") == pytest.approx(21.5)
            # The raw register holds (21.5 + 40) / 0.1 = 615.
            words = await driver.link.read(
                options.tags["scaled"].table, options.tags["scaled"].address, 1, "t"
            )
            assert words == [615]
            with pytest.raises(StepFailed, match=r"'int16_big_big'.*holding 1000"):
                await driver.write_tag("int16_big_big", 40000)
            with pytest.raises(StepFailed, match="longer than the 11"):
                await driver.write_tag("text_big_big", "much too long for it")
