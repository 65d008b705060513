"""Whatever the printer sends, the driver's line handler survives it."""

from __future__ import annotations

import asyncio

from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions, _FirmwareRestarted
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.driver import DriverContext
from cellctl.model import Samples

PREFIXES = ["ok", "ok N", "Resend:", "rs ", "Error:", "echo:busy:", "FIRMWARE_NAME:", "Cap:",
            "T:", "X:", "FR:", "echo:E0 Flow:", "//action:", " T:1 /2 B:3 /4 @:", ""]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(prefix=st.sampled_from(PREFIXES), tail=st.binary(max_size=60))
def test_any_line_is_survived(prefix: str, tail: bytes) -> None:
    async def feed() -> None:
        events: list = []
        driver = MarlinDriver(DriverContext("p", emit=events.append), MarlinOptions())
        try:
            driver._handle(prefix.encode() + tail)
            driver._handle(b"X:1.2.3 Y:4 Z:5 E:6")  # a malformed number
            driver._handle(b"ok N99999999999999999999999 P-1 B")
        except _FirmwareRestarted:  # `start`: a real, handled event, not garbage
            pass
        driver._handle(b" T:201.5 /210.0 B:60.0 /60.0 @:10 B@:5")  # and it still understands
        last = events[-1]
        assert isinstance(last, Samples)
        assert {s.name: s.value for s in last.samples}["hotend_temp"] == 201.5

    asyncio.run(feed())
