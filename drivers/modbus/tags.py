"""Tag values ↔ registers, scaled, with errors that name the tag and its address."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

from cellctl.errors import StepFailed
from cellctl.model import MetricSpec, MetricType, MetricValue

from .codec import STRUCT_FORMAT, DataType, EncodeError, Order, decode, encode
from .options import ModbusOptions, Tag
from .plan import Read, Span


def metric_spec(name: str, tag: Tag) -> MetricSpec:
    dtype = tag.dtype
    if dtype == DataType.BOOL:
        kind = MetricType.BOOL
    elif dtype == DataType.STRING:
        kind = MetricType.STRING
    elif dtype in (DataType.FLOAT32, DataType.FLOAT64) or tag.scaled:
        kind = MetricType.FLOAT
    else:
        kind = MetricType.INT
    return MetricSpec(name, kind, tag.unit, tag.description, tag.writable)


def span(name: str, tag: Tag) -> Span:
    return Span(name, tag.table, tag.address, tag.size)


def value_from(options: ModbusOptions, tag: Tag, words: list[int]) -> MetricValue:
    """The engineering value of a tag from its own registers (or one bit)."""
    raw = decode(
        words,
        tag.dtype,
        options.word_order_of(tag),
        options.byte_order_of(tag),
        tag.length,
        tag.bit,
    )
    if tag.scaled and not isinstance(raw, bool | str):
        return raw * tag.scale + tag.offset
    return raw


Decoder = Callable[[list[int], int], MetricValue]
"""The value of a tag from a read's whole answer and the tag's offset in it."""


def decoder(options: ModbusOptions, tag: Tag) -> Decoder:
    """A decoder for the tag, with its layout worked out once (see codec.decode for the rules).

    Polling decodes every tag of every answer, so each decoder does only what
    its tag needs: an index for a plain register or a coil, precompiled structs
    for the rest.
    """
    dtype = tag.dtype
    if dtype == DataType.BOOL:
        if tag.bit is None:
            return lambda w, at: w[at] != 0
        bit = tag.bit
        return lambda w, at: (w[at] >> bit) & 1 == 1
    word, byte = options.word_order_of(tag), options.byte_order_of(tag)
    size = tag.size
    swap = byte == Order.LITTLE
    if dtype == DataType.STRING:
        length = tag.length
        pack_words = struct.Struct(f">{size}H").pack

        def text(w: list[int], at: int) -> MetricValue:
            words = w[at : at + size]
            if swap:
                words = [((x & 0xFF) << 8) | (x >> 8) for x in words]
            data = pack_words(*words)[:length]
            # A PLC pads with NUL or spaces; garbage bytes are shown, not fatal.
            return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip(" ")

        return text
    if size == 1 and not swap and not tag.scaled:
        if dtype == DataType.UINT16:
            return lambda w, at: w[at]
        return lambda w, at: w[at] - 0x10000 if w[at] & 0x8000 else w[at]  # int16
    reverse = word == Order.LITTLE and size > 1
    scale, offset, scaled = tag.scale, tag.offset, tag.scaled
    if size == 2 and not swap and not scaled:
        return _two_words(dtype, 1 if reverse else 0)
    pack_words = struct.Struct(f">{size}H").pack
    unpack = struct.Struct(">" + STRUCT_FORMAT[dtype]).unpack

    def number(w: list[int], at: int) -> MetricValue:
        words = w[at : at + size]
        if swap:
            words = [((x & 0xFF) << 8) | (x >> 8) for x in words]
        if reverse:
            words.reverse()
        value: int | float = unpack(pack_words(*words))[0]
        return value * scale + offset if scaled else value

    return number


_PACK_TWO = struct.Struct(">HH").pack
_UNPACK_FLOAT32 = struct.Struct(">f").unpack


def _two_words(dtype: DataType, high: int) -> Decoder:
    """32-bit values, the most common PLC layouts (ABCD, CDAB), without a slice."""
    low = 1 - high
    if dtype == DataType.UINT32:
        return lambda w, at: (w[at + high] << 16) | w[at + low]
    if dtype == DataType.INT32:
        return lambda w, at: (
            ((w[at + high] << 16) | w[at + low]) - (0x1_0000_0000 if w[at + high] & 0x8000 else 0)
        )
    return lambda w, at: _UNPACK_FLOAT32(_PACK_TWO(w[at + high], w[at + low]))[0]


def compile_read(options: ModbusOptions, read: Read) -> list[tuple[str, int, Decoder]]:
    """(name, offset in the answer, decoder) for each tag a read serves."""
    return [
        (s.name, s.address - read.address, decoder(options, options.tags[s.name]))
        for s in read.spans
    ]


def values_of_read(options: ModbusOptions, read: Read, words: list[int]) -> dict[str, MetricValue]:
    return {name: fn(words, at) for name, at, fn in compile_read(options, read)}


def words_for(options: ModbusOptions, name: str, value: MetricValue) -> list[int]:
    """Registers (or one bit as 0/1) to write `value` to tag `name`. Raises StepFailed."""
    tag = options.tags[name]
    dtype = tag.dtype
    if dtype == DataType.BOOL:
        if not isinstance(value, bool | int) or (isinstance(value, int) and value not in (0, 1)):
            raise StepFailed(f"tag {name!r} ({tag.where()}): expected true/false, got {value!r}")
        return [1 if value else 0]
    raw: MetricValue = value
    if tag.scaled:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StepFailed(f"tag {name!r} ({tag.where()}): expected a number, got {value!r}")
        raw = (value - tag.offset) / tag.scale
    elif dtype != DataType.STRING and isinstance(value, bool):
        raise StepFailed(f"tag {name!r} ({tag.where()}): expected a number, got {value!r}")
    if dtype in (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32):
        if (
            isinstance(raw, float)
            and not tag.scaled
            and math.isfinite(raw)
            and not raw.is_integer()
        ):
            raise StepFailed(
                f"tag {name!r} ({tag.where()}): {dtype} takes whole numbers, got {raw}"
            )
    try:
        return encode(
            raw, dtype, options.word_order_of(tag), options.byte_order_of(tag), tag.length
        )
    except EncodeError as exc:
        raise StepFailed(f"tag {name!r} ({tag.where()}): {exc}") from None
