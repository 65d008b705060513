"""Values ↔ Modbus registers: every data type, word order and byte order.

Pure functions, no I/O. A value is first packed big-endian (the Modbus
convention for one register), then reordered: `byte_order = "little"` swaps
the two bytes inside every register, `word_order = "little"` puts the least
significant register first (the common "CDAB" layout of many PLCs is
word_order little + byte_order big). Strings are byte sequences padded with
NUL to their fixed length; word order does not apply to them (each register
holds the next two characters), byte order does.
"""

from __future__ import annotations

import enum
import math
import struct


class DataType(enum.StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class Order(enum.StrEnum):
    BIG = "big"
    LITTLE = "little"


_STRUCT = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

STRUCT_FORMAT = {t: fmt for t, (fmt, _) in _STRUCT.items()}

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}


class EncodeError(ValueError):
    """A value that does not fit its tag's type."""


def register_count(dtype: DataType, length: int = 0) -> int:
    """Registers a value of this type occupies (a BOOL in a register occupies one)."""
    if dtype == DataType.STRING:
        return (length + 1) // 2
    if dtype == DataType.BOOL:
        return 1
    return _STRUCT[dtype][1]


def _words(raw: bytes) -> list[int]:
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def _bytes(words: list[int]) -> bytes:
    return struct.pack(f">{len(words)}H", *words)


def _swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def encode(
    value: bool | int | float | str,
    dtype: DataType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
    length: int = 0,
) -> list[int]:
    """Registers for a raw (unscaled) value. Raises EncodeError if it does not fit."""
    if dtype == DataType.BOOL:
        return [1 if value else 0]
    if dtype == DataType.STRING:
        if not isinstance(value, str):
            raise EncodeError(f"expected a string, got {value!r}")
        data = value.encode("utf-8")
        if len(data) > length:
            raise EncodeError(f"{value!r} is {len(data)} bytes, longer than the {length} allowed")
        data = data.ljust(register_count(dtype, length) * 2, b"\x00")
        words = _words(data)
        return _swap_bytes(words) if byte_order == Order.LITTLE else words
    fmt, _ = _STRUCT[dtype]
    if isinstance(value, str):
        raise EncodeError(f"expected a number, got {value!r}")
    if dtype in INT_RANGES:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise EncodeError(f"{value} cannot be written to an integer register")
            value = round(value)
        lo, hi = INT_RANGES[dtype]
        if not lo <= value <= hi:
            raise EncodeError(f"{value} is outside {dtype} ({lo}..{hi})")
        raw = struct.pack(">" + fmt, int(value))
    else:
        try:
            raw = struct.pack(">" + fmt, float(value))
        except OverflowError:
            raise EncodeError(f"{value} does not fit in {dtype}") from None
    words = _words(raw)
    if word_order == Order.LITTLE:
        words.reverse()
    if byte_order == Order.LITTLE:
        words = _swap_bytes(words)
    return words


def decode(
    words: list[int],
    dtype: DataType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
    length: int = 0,
    bit: int | None = None,
) -> bool | int | float | str:
    """A raw (unscaled) value from exactly `register_count(dtype, length)` registers."""
    if dtype == DataType.BOOL:
        if bit is not None:
            return bool((words[0] >> bit) & 1)
        return words[0] != 0
    if byte_order == Order.LITTLE:
        words = _swap_bytes(words)
    if dtype == DataType.STRING:
        data = _bytes(words)[:length]
        # A PLC pads with NUL or spaces; garbage bytes are shown, not fatal.
        return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip(" ")
    if word_order == Order.LITTLE:
        words = list(reversed(words))
    fmt, _ = _STRUCT[dtype]
    value: int | float = struct.unpack(">" + fmt, _bytes(words))[0]
    return value
