"""A pseudo-terminal that plays the USB-serial device for a firmware simulator.

The simulator owns the master side; clients open `path`, a symlink in a
private temporary directory that points at the current `/dev/pts/N`. Unplug
closes the pseudo-terminal and removes the link (the client's reads fail with
EIO, as when a USB cable is pulled); replug makes a new pseudo-terminal and
points the same path at it, as when the device comes back.

Bytes are paced by `LinkTiming` in both directions, device→host bytes pass
an FTDI-style latency buffer, and `Faults` may damage or drop lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import tempfile
import tty
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog

from .emulation import LatencyBuffer, LinkTiming, Wire
from .faults import FaultPlan, Faults

log = structlog.get_logger("cellctl.serial.pty")


@dataclass(frozen=True, slots=True)
class Received:
    """A piece of host→device traffic: a whole line (ending b'\\n') or a partial chunk."""

    data: bytes
    corrupted: bool = False


class PtyHost:
    """Async context manager; `path` is stable across unplug/replug."""

    def __init__(
        self,
        timing: LinkTiming | None = None,
        faults: FaultPlan | Faults | None = None,
        name: str = "tty",
        emulate: bool = True,
    ) -> None:
        self.timing = timing or LinkTiming()
        self.emulate = emulate
        self.faults = faults if isinstance(faults, Faults) else Faults(faults or FaultPlan())
        self._name = name
        self._dir: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx_wire = Wire(self.timing.bytes_per_s if emulate else None)
        self._rx: deque[tuple[float, Received]] = deque()
        self._rx_partial = b""
        self._rx_event = asyncio.Event()
        self._tx = (
            LatencyBuffer(self.timing)
            if emulate
            else LatencyBuffer(LinkTiming(baud=None, latency_ms=0), frame_s=0.0)
        )
        self._tx_timer: asyncio.TimerHandle | None = None
        self._tx_soon: asyncio.Handle | None = None
        self._stalled_until = 0.0
        self.bytes_in = 0  # host→device bytes delivered to the firmware
        self.bytes_out = 0  # device→host bytes handed to the host
        self.bytes_lost = 0  # device→host bytes dropped because nobody read them
        self.plugs = 0

    # --- lifecycle ---

    @property
    def path(self) -> str:
        if self._dir is None:
            raise RuntimeError("PtyHost is not started")
        return os.path.join(self._dir, self._name)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._dir = tempfile.mkdtemp(prefix="cellctl-pty-")
        self.replug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def replug(self) -> None:
        """Plug the device (back) in: a new pseudo-terminal behind the same path."""
        if self._master is not None:
            return
        assert self._loop is not None and self._dir is not None
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF rewriting on the client's side
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        self._loop.add_reader(master, self._on_readable)
        self.plugs += 1
        log.debug("pty plugged", path=self.path, tty=os.ttyname(slave))

    def unplug(self) -> None:
        """Pull the cable: the client's reads fail; bytes in flight are lost."""
        if self._master is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        if self._dir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._tx_timer is not None:
            self._tx_timer.cancel()
            self._tx_timer = None
        if self._tx_soon is not None:
            self._tx_soon.cancel()
            self._tx_soon = None
        self._tx.clear()
        self._rx.clear()
        self._rx_partial = b""
        self._rx_wire.reset()

    def stall(self, seconds: float) -> None:
        """The link carries nothing for a while (both directions); nothing is lost."""
        assert self._loop is not None
        self._stalled_until = max(self._stalled_until, self._loop.time() + seconds)
        self._rx_event.set()
        self._schedule_tx(self._stalled_until)

    # --- host → device ---

    def _on_readable(self) -> None:
        assert self._loop is not None and self._master is not None
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no client has the port open: nothing to read
                return
            raise
        now = self._loop.time()
        data = self._rx_partial + data
        lines = data.split(b"\n")
        self._rx_partial = b""
        for i, piece in enumerate(lines):
            last = i == len(lines) - 1
            if last and not piece:
                break
            if last:
                # A chunk without line end: realtime bytes (GRBL `?`) or half a line.
                # Deliver it now; only whole lines are candidates for noise.
                item = Received(piece)
            else:
                damaged, hit = self.faults.corrupt(piece + b"\n")
                item = Received(damaged, hit)
            _, arrival = self._rx_wire.send(len(item.data), now)
            self._rx.append((arrival, item))
        self._rx_event.set()

    async def read(self) -> Received:
        """The next piece of host→device traffic, when its last byte has arrived."""
        assert self._loop is not None
        while True:
            if self._rx:
                arrival, item = self._rx[0]
                due = max(arrival, self._stalled_until)
                now = self._loop.time()
                if due <= now:
                    self._rx.popleft()
                    self.bytes_in += len(item.data)
                    return item
                # A stall only pushes `due` later and an unplug empties the queue:
                # both are seen when the sleep ends, so no early wake-up is needed.
                await asyncio.sleep(due - now)
                continue
            self._rx_event.clear()
            await self._rx_event.wait()

    # --- device → host ---

    def write(self, data: bytes) -> None:
        """Queue device→host bytes; they reach the host as the link allows."""
        if self._master is None or not data:
            return
        assert self._loop is not None
        now = self._loop.time()
        self._tx.put(data, max(now, self._stalled_until))
        if self._tx_soon is None:
            # Replies written in one loop iteration leave in one write (a pseudo-
            # terminal write is costly); the flush decides what the link lets through.
            self._tx_soon = self._loop.call_soon(self._on_soon)

    def write_line(self, line: bytes) -> None:
        """Write one reply line (b'\\n' added); the fault plan may drop it."""
        if self.faults.drops(line):
            return
        self.write(line + b"\n")

    def _on_soon(self) -> None:
        self._tx_soon = None
        self._flush()

    def _on_timer(self) -> None:
        self._tx_timer = None
        self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        if self._master is None:
            return
        now = self._loop.time()
        if now < self._stalled_until:
            self._schedule_tx(self._stalled_until)
            return
        data = self._tx.take(now)
        if data:
            try:
                written = os.write(self._master, data)
            except BlockingIOError:
                written = 0
            except OSError:  # nobody has the port open
                written = 0
            self.bytes_out += written
            self.bytes_lost += len(data) - written  # a full host buffer: the UART drops them
        nxt = self._tx.next_time(now)
        if nxt is not None:
            self._schedule_tx(nxt)

    def _schedule_tx(self, when: float) -> None:
        assert self._loop is not None
        if self._tx_timer is not None:
            if self._tx_timer.when() <= when:
                return
            self._tx_timer.cancel()
        self._tx_timer = self._loop.call_at(when, self._on_timer)
