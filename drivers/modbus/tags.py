"""Tag values ↔ registers, scaled, with errors that name the tag and its address."""

from __future__ import annotations

import math

from cellctl.errors import StepFailed
from cellctl.model import MetricSpec, MetricType, MetricValue

from .codec import DataType, EncodeError, decode, encode
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


def values_of_read(options: ModbusOptions, read: Read, words: list[int]) -> dict[str, MetricValue]:
    out: dict[str, MetricValue] = {}
    for s in read.spans:
        tag = options.tags[s.name]
        start = s.address - read.address
        out[s.name] = value_from(options, tag, words[start : start + s.size])
    return out


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
