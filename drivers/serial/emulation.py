"""Timing of an emulated USB-serial link: pure arithmetic, no I/O.

A pseudo-terminal moves bytes instantly; a real link does not. `LinkTiming`
describes the link, `Wire` paces bytes at the baud rate (8N1: ten bits a
byte), and `LatencyBuffer` models the adapter on the device side of an
FTDI-style chip: bytes coming from the device wait until 62 of them are
there or the latency timer runs out, and leave in USB frames (1 ms apart at
full speed). Host→device has no latency timer, only the wire.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

USB_PACKET = 62  # FTDI: 64-byte USB packet minus 2 modem-status bytes
USB_FRAME_S = 0.001  # full-speed USB polls bulk endpoints once a frame


@dataclass(frozen=True)
class LinkTiming:
    """An emulated link. `baud=None` turns pacing off (a native-USB CDC board)."""

    baud: int | None = 115200
    latency_ms: float = 16.0  # FTDI default latency timer

    @property
    def bytes_per_s(self) -> float | None:
        return None if self.baud is None else self.baud / 10.0

    @property
    def latency_s(self) -> float:
        return max(0.0, self.latency_ms) / 1000.0


class Wire:
    """One direction of the wire: when does each byte finish arriving?"""

    def __init__(self, bytes_per_s: float | None) -> None:
        self._byte_s = 0.0 if bytes_per_s is None else 1.0 / bytes_per_s
        self.free_at = 0.0  # when the last byte handed to the wire has arrived

    def send(self, n: int, now: float) -> tuple[float, float]:
        """n bytes enter the wire at `now`: (arrival of the first, arrival of the last)."""
        start = max(now, self.free_at)
        first = start + self._byte_s
        self.free_at = start + n * self._byte_s
        return first, self.free_at

    @property
    def byte_s(self) -> float:
        return self._byte_s

    def reset(self) -> None:
        self.free_at = 0.0


class LatencyBuffer:
    """Device→host: wire pacing, then the adapter's 62-byte / latency-timer rule."""

    def __init__(self, timing: LinkTiming, frame_s: float = USB_FRAME_S) -> None:
        self._timing = timing
        self._frame_s = frame_s  # 0: no USB framing (link emulation off)
        self._wire = Wire(timing.bytes_per_s)
        # (arrival time of the first byte, byte period, data) per written chunk
        self._chunks: deque[tuple[float, float, bytes]] = deque()
        self._last_flush = -1.0

    def __len__(self) -> int:
        return sum(len(c[2]) for c in self._chunks)

    def clear(self) -> None:
        self._chunks.clear()
        self._wire.reset()

    def put(self, data: bytes, now: float) -> None:
        if data:
            first, _ = self._wire.send(len(data), now)
            self._chunks.append((first, self._wire.byte_s, data))

    def _arrival(self, k: int) -> float:
        """Arrival time at the adapter of the k-th waiting byte (0-based)."""
        for first, period, data in self._chunks:
            if k < len(data):
                return first + k * period
            k -= len(data)
        raise IndexError(k)

    def _arrived(self, now: float) -> int:
        n = 0
        for first, period, data in self._chunks:
            if first > now:
                break
            if period == 0.0:
                n += len(data)
                continue
            got = min(len(data), int((now - first) / period + 1e-9) + 1)
            n += got
            if got < len(data):
                break
        return n

    def take(self, now: float) -> bytes:
        """Bytes the adapter hands to the host at `now` (possibly none)."""
        if not self._chunks or now < self._last_flush + self._frame_s:
            return b""
        arrived = self._arrived(now)
        if arrived == 0:
            return b""
        full = arrived - arrived % USB_PACKET
        rest_first = self._arrival(full) if arrived > full else None
        if rest_first is not None and rest_first + self._timing.latency_s <= now + 1e-9:
            n = arrived
        else:
            n = full
        if n == 0:
            return b""
        self._last_flush = now
        return self._pop(n)

    def _pop(self, n: int) -> bytes:
        out = bytearray()
        while n:
            first, period, data = self._chunks[0]
            if len(data) <= n:
                out += data
                n -= len(data)
                self._chunks.popleft()
            else:
                out += data[:n]
                self._chunks[0] = (first + n * period, period, data[n:])
                n = 0
        return bytes(out)

    def next_time(self, now: float) -> float | None:
        """When `take` may next return bytes; None when nothing waits."""
        if not self._chunks:
            return None
        total = len(self)
        arrived = self._arrived(now)
        full = arrived - arrived % USB_PACKET
        candidates: list[float] = []
        if full + USB_PACKET <= total:
            candidates.append(self._arrival(full + USB_PACKET - 1))
        if total > full:
            candidates.append(self._arrival(full) + self._timing.latency_s)
        if full > 0:
            candidates.append(now)
        t = min(candidates)
        return max(t, self._last_flush + self._frame_s)
