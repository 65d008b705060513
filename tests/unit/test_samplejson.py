"""The hand-written samples payload parses to what json.dumps would have written."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from cellctl.model import Quality, Sample
from cellctl.telemetry.pahoclient import remaining_length
from cellctl.telemetry.samplejson import SampleJson

values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
samples = st.builds(
    Sample,
    name=st.text(min_size=1, max_size=20),
    value=values,
    timestamp=st.floats(min_value=0, max_value=4e9),
    quality=st.sampled_from(list(Quality)),
)


def reference(device: str, items: list[Sample], now: float) -> bytes:
    body = {
        "v": 1,
        "ts": now,
        "device": device,
        "samples": [
            {"name": s.name, "value": s.value, "ts": s.timestamp, "quality": s.quality.value}
            for s in items
        ],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@given(device=st.text(min_size=1, max_size=20), items=st.lists(samples, max_size=5))
def test_same_bytes_as_json_dumps(device: str, items: list[Sample]) -> None:
    enc = SampleJson(1)
    now = 1_700_000_000.25
    # Twice: the second call answers names from the cache.
    assert enc.encode(device, items, now) == reference(device, items, now)
    assert enc.encode(device, items, now) == reference(device, items, now)


def test_cache_is_bounded() -> None:
    enc = SampleJson(1)
    for i in range(10_000):
        enc.text(f"metric-{i}")
    assert len(enc._strings) <= 4096
    assert enc.text("metric-9999") == '"metric-9999"'


@given(st.integers(min_value=0, max_value=268_435_455))
def testremaining_length_decodes_per_mqtt(n: int) -> None:
    encoded = remaining_length(n)
    value, mult = 0, 1
    for i, byte in enumerate(encoded):
        value += (byte & 0x7F) * mult
        mult *= 128
        assert bool(byte & 0x80) == (i < len(encoded) - 1)  # continuation bit on all but last
    assert value == n and len(encoded) <= 4
