"""The shared serial plumbing on real pseudo-terminals: SerialLink ↔ PtyHost/SerialFirmware."""

from __future__ import annotations

import asyncio
import os
import termios
import time

import pytest
from cellctl_drivers.serial import (
    FaultPlan,
    Faults,
    LatencyBuffer,
    LinkTiming,
    Received,
    SerialFirmware,
    SerialLink,
    SerialSimOptions,
)

from cellctl.errors import LinkError


class EchoFirmware(SerialFirmware):
    """Answers every line with `echo:<line>`; `!` is a realtime byte."""

    name = "echo"
    realtime = frozenset(b"!")

    def __init__(self, options: SerialSimOptions | None = None) -> None:
        super().__init__(options)
        self.executed: list[bytes] = []
        self.realtime_seen = 0
        self.arrived_corrupted = 0

    def boot(self) -> None:
        self.reply("start")

    def on_realtime(self, byte: int) -> None:
        self.realtime_seen += 1
        self.reply("rt")

    def on_arrival(self, line: Received) -> bool:
        self.arrived_corrupted += line.corrupted
        return False

    async def execute(self, item: Received) -> None:
        line = item.data.rstrip(b"\n")
        self.executed.append(line)
        self.reply(b"echo:" + line)


async def _reply(link: SerialLink) -> bytes:
    """The next line that is not the boot banner (it may or may not arrive after open)."""
    while (line := await link.readline()) == b"start":
        pass
    return line


def _exists(path: str) -> bool:
    return os.path.lexists(path)


FAST = SerialSimOptions(emulate_link=False, parse_rate=100000)


async def test_lines_round_trip_and_realtime_bytes() -> None:
    async with asyncio.timeout(10), EchoFirmware(FAST) as sim:
        link = await SerialLink.open(sim.endpoint, 115200)
        try:
            for i in range(200):
                link.write_nowait(b"G1 X%d\n" % i)
            await link.drain()
            got = [await _reply(link) for _ in range(200)]
            assert got == [b"echo:G1 X%d" % i for i in range(200)]
            await link.write(b"!")
            while await link.readline() != b"rt":
                pass
            assert sim.realtime_seen == 1
            assert link.bytes_written > 0 and link.bytes_read > 0
        finally:
            await link.close()
            await link.close()  # idempotent


async def test_open_holds_dtr_low_and_clears_hupcl() -> None:
    async with EchoFirmware(FAST) as sim:
        link = await SerialLink.open(sim.endpoint)
        try:
            attrs = termios.tcgetattr(link._fd)
            assert not attrs[2] & termios.HUPCL
            assert link._port.dtr is False
        finally:
            await link.close()


async def test_missing_port_is_a_link_error() -> None:
    with pytest.raises(LinkError, match="cannot open"):
        await SerialLink.open("/nonexistent/ttyUSB9")


async def test_unplug_is_a_link_error_and_replug_uses_the_same_path() -> None:
    async with asyncio.timeout(10), EchoFirmware(FAST) as sim:
        path = sim.endpoint
        first_target = os.readlink(path)
        link = await SerialLink.open(path)
        await link.write(b"hello\n")
        assert await link.readline() in (b"start", b"echo:hello")
        sim.host.unplug()
        assert not _exists(path)
        with pytest.raises(LinkError, match="went away"):
            while True:
                await link.readline()
        with pytest.raises(LinkError):
            await link.write(b"more\n")
        await link.close()
        with pytest.raises(LinkError):
            await SerialLink.open(path)
        sim.host.replug()
        assert sim.endpoint == path and _exists(path)
        assert os.readlink(path) != first_target or sim.host.plugs == 2
        link = await SerialLink.open(path)
        try:
            await link.write(b"again\n")
            while (line := await link.readline()) != b"echo:again":
                assert line.startswith(b"echo:") or line == b"start"
        finally:
            await link.close()


async def test_baud_paces_both_directions() -> None:
    # 9600 baud = 960 bytes/s: 480 bytes each way need at least 0.5 s.
    opts = SerialSimOptions(baud=9600, latency_ms=0, parse_rate=100000)
    async with asyncio.timeout(20), EchoFirmware(opts) as sim:
        link = await SerialLink.open(sim.endpoint)
        try:
            assert await link.readline() == b"start"
            payload = [b"%07d\n" % i for i in range(60)]  # 480 bytes out
            t0 = time.monotonic()
            for p in payload:
                link.write_nowait(p)
            for _ in payload:
                await link.readline()
            elapsed = time.monotonic() - t0
            assert elapsed >= 0.45  # a lower bound: pacing can only slow things down
            assert sim.host.bytes_in == 480
        finally:
            await link.close()


def test_latency_buffer_holds_small_replies_until_the_timer() -> None:
    buf = LatencyBuffer(LinkTiming(baud=115200, latency_ms=16))
    buf.put(b"ok\n", now=0.0)
    arrived = 3 / 11520
    assert buf.take(arrived) == b""
    nxt = buf.next_time(arrived)
    assert nxt == pytest.approx(1 / 11520 + 0.016)
    assert buf.take(nxt) == b"ok\n"
    assert buf.next_time(nxt) is None


def test_latency_buffer_sends_full_packets_at_once() -> None:
    buf = LatencyBuffer(LinkTiming(baud=115200, latency_ms=16))
    buf.put(b"x" * 100, now=0.0)
    t62 = buf.next_time(0.0)
    assert t62 == pytest.approx(62 / 11520)
    assert buf.take(t62) == b"x" * 62
    rest = buf.next_time(t62)
    assert rest == pytest.approx(63 / 11520 + 0.016)
    assert buf.take(rest) == b"x" * 38


def test_noise_spares_the_line_number_marker_and_is_counted() -> None:
    faults = Faults(FaultPlan(corrupt_p=1.0, seed=7))
    for i in range(200):
        line = b"N%d G1 X1*99\n" % i
        out, hit = faults.corrupt(line)
        assert hit and out != line and out[:1] == b"N" and out.endswith(b"\n")
        assert sum(a != b for a, b in zip(out, line, strict=True)) == 1
    assert faults.counters.lines_corrupted == 200
    burst = Faults(FaultPlan(corrupt_p=1.0, corrupt_bytes=4, seed=1))
    out, _ = burst.corrupt(b"N1 G1 X1*99\n")
    assert sum(a != b for a, b in zip(out, b"N1 G1 X1*99\n", strict=True)) == 4


async def test_corrupted_lines_reach_the_firmware_flagged() -> None:
    opts = SerialSimOptions(emulate_link=False, parse_rate=100000, corrupt_p=0.5, seed=3)
    async with asyncio.timeout(10), EchoFirmware(opts) as sim:
        link = await SerialLink.open(sim.endpoint)
        try:
            for i in range(100):
                await link.write(b"N%d M105*1\n" % i)
            while len(sim.executed) < 100:
                await link.readline()
            assert sim.arrived_corrupted == sim.faults.counters.lines_corrupted > 0
        finally:
            await link.close()


async def test_dropped_reply_and_stall() -> None:
    async with asyncio.timeout(10), EchoFirmware(FAST) as sim:
        link = await SerialLink.open(sim.endpoint)
        try:
            sim.faults.plan = FaultPlan(drop_prefix=b"echo:")
            sim.faults.drop_next_reply()
            await link.write(b"a\nb\n")
            assert await _reply(link) == b"echo:b"
            assert sim.faults.counters.replies_dropped == 1
            sim.host.stall(0.3)
            t0 = time.monotonic()
            await link.write(b"c\n")
            assert await _reply(link) == b"echo:c"
            assert time.monotonic() - t0 >= 0.25
        finally:
            await link.close()


async def test_urgent_bytes_overtake_queued_ones_and_close_flushes() -> None:
    async with asyncio.timeout(10), EchoFirmware(FAST) as sim:
        link = await SerialLink.open(sim.endpoint)
        try:
            link.write_nowait(b"one\n")
            link.write_nowait(b"two\n")
            link.write_nowait(b"now\n", urgent=True)  # same loop iteration: goes first
            got = [await _reply(link) for _ in range(3)]
            assert got == [b"echo:now", b"echo:one", b"echo:two"]
            assert link.reactions or link.bytes_written == 12
            link.write_nowait(b"last\n")
        finally:
            await link.close()  # the queued line still leaves
        async with asyncio.timeout(5):
            while b"last" not in sim.executed:
                await asyncio.sleep(0.01)
