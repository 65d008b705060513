"""The driver's side of a serial port: open without resetting the board, bytes out, lines in.

pyserial configures the port; I/O runs on the event loop through the file
descriptor (no threads). Every serial or OS error becomes `LinkError`, and a
port that goes away (EIO, or end of file on a hung-up tty) does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import time
from collections import deque

import serial

from cellctl.errors import LinkError

MAX_LINE = 4096  # longer garbage without a line end is cut into pieces of this size


class SerialLink:
    """An open port. Use `await SerialLink.open(path, baud)`; close with `await close()`."""

    def __init__(self, port: serial.Serial, path: str) -> None:
        self._port = port
        self.path = path
        self._fd: int = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._rbuf = bytearray()
        self._lines: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._out: deque[bytearray] = deque()  # head may be partly written
        self._head_started = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._writer_armed = False
        self._error: LinkError | None = None
        self.bytes_written = 0
        self.bytes_read = 0
        self.last_read_at = 0.0  # time.monotonic() of the last bytes read
        self._read_since_write = False
        # Seconds from reading bytes to the next write (e.g. from an `ok` to the next
        # line): how fast the host reacts, the figure that matters when streaming.
        self.reactions: deque[float] = deque(maxlen=100_000)
        self._flush_handle: asyncio.Handle | None = None
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def open(cls, path: str, baud: int = 115200, *, allow_reset: bool = False) -> SerialLink:
        """Open `path`. Unless `allow_reset`, DTR is held low and HUPCL cleared, so that
        neither this open nor a later close/reopen pulses DTR (which resets AVR boards).
        Linux itself raises DTR on the very first open of a port whose HUPCL is still set;
        once cleared it stays cleared until the adapter is replugged."""
        port = serial.Serial()
        port.port = path
        port.baudrate = baud
        port.timeout = 0
        port.write_timeout = 0
        port.exclusive = True
        if not allow_reset:
            port.dtr = False
            port.rts = False
        try:
            port.open()
            if not allow_reset:
                attrs = termios.tcgetattr(port.fileno())
                attrs[2] &= ~termios.HUPCL
                termios.tcsetattr(port.fileno(), termios.TCSANOW, attrs)
        except (serial.SerialException, OSError, termios.error) as exc:
            with contextlib.suppress(Exception):
                port.close()
            raise LinkError(f"cannot open {path}: {exc}") from exc
        return cls(port, path)

    @property
    def closed(self) -> bool:
        return not self._port.is_open

    @property
    def error(self) -> LinkError | None:
        """Why the link failed, once it has."""
        return self._error

    # --- reading ---

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = LinkError(f"{self.path}: {why}")
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._fd)
        self._readable.set()
        self._drained.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail("device went away" if exc.errno == errno.EIO else f"read failed: {exc}")
            return
        if not data:
            self._fail("device went away (end of file)")
            return
        self.bytes_read += len(data)
        self.last_read_at = time.monotonic()
        self._read_since_write = True
        self._rbuf += data
        while True:
            nl = self._rbuf.find(b"\n")
            if nl < 0:
                if len(self._rbuf) >= MAX_LINE:
                    self._lines.append(bytes(self._rbuf[:MAX_LINE]))
                    del self._rbuf[:MAX_LINE]
                    continue
                break
            line = bytes(self._rbuf[:nl]).rstrip(b"\r")
            del self._rbuf[: nl + 1]
            self._lines.append(line)
        if self._lines:
            self._readable.set()

    async def readline(self) -> bytes:
        """The next line without its line end. Raises LinkError once the port is gone
        (lines that arrived before are returned first)."""
        while not self._lines:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise LinkError(f"{self.path}: closed")
            self._readable.clear()
            await self._readable.wait()
        return self._lines.popleft()

    # --- writing ---

    def write_nowait(self, data: bytes, *, urgent: bool = False) -> None:
        """Queue bytes for the port; they are written at the end of this event-loop
        iteration, together with whatever else was queued in it (one system call
        instead of one per line). `urgent` writes at once, ahead of everything
        queued (behind only a chunk already partly on its way, so no line is split)."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise LinkError(f"{self.path}: closed")
        if not data:
            return
        if urgent:
            if self._out and self._head_started:
                self._out.insert(1, bytearray(data))
            else:
                self._out.appendleft(bytearray(data))
                self._head_started = False
            self._drained.clear()
            self._write_some()
            return
        self._out.append(bytearray(data))
        self._drained.clear()
        if self._flush_handle is None and not self._writer_armed:
            self._flush_handle = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if self._error is None and not self.closed:
            self._write_some()

    def flush(self) -> None:
        """Write what is queued now instead of at the end of the loop iteration
        (a reader that has handled every line it has can react one iteration sooner)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out and self._error is None and not self.closed and not self._writer_armed:
            self._write_some()

    @property
    def lines_waiting(self) -> int:
        """Complete lines read and not yet taken by `readline()`."""
        return len(self._lines)

    async def write(self, data: bytes, *, urgent: bool = False) -> None:
        """Queue bytes and wait until the kernel has taken all queued bytes."""
        self.write_nowait(data, urgent=urgent)
        await self.drain()

    async def drain(self) -> None:
        await self._drained.wait()
        if self._error is not None:
            raise self._error

    def _write_some(self) -> None:
        if len(self._out) > 1 and not self._head_started:
            joined = bytearray().join(self._out)
            self._out.clear()
            self._out.append(joined)
        while self._out:
            head = self._out[0]
            try:
                n = os.write(self._fd, head)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._fail("device went away" if exc.errno == errno.EIO else f"write failed: {exc}")
                return
            self.bytes_written += n
            if n and self._read_since_write:
                self._read_since_write = False
                self.reactions.append(time.monotonic() - self.last_read_at)
            if n < len(head):
                del head[:n]
                self._head_started = self._head_started or n > 0
                if not self._writer_armed:
                    self._loop.add_writer(self._fd, self._write_some)
                    self._writer_armed = True
                return
            self._out.popleft()
            self._head_started = False
        if self._writer_armed:
            self._loop.remove_writer(self._fd)
            self._writer_armed = False
        self._drained.set()

    async def pulse_dtr(self, seconds: float = 0.1) -> None:
        """Raise DTR briefly: resets boards that reset on DTR (a pseudo-terminal ignores it)."""
        try:
            self._port.dtr = True
            await asyncio.sleep(seconds)
            self._port.dtr = False
        except (serial.SerialException, OSError) as exc:
            if getattr(exc, "errno", None) not in (errno.EINVAL, errno.ENOTTY):
                raise LinkError(f"{self.path}: DTR pulse failed: {exc}") from exc

    @property
    def pending_out(self) -> int:
        """Bytes queued here that the kernel has not taken yet."""
        return sum(len(c) for c in self._out)

    async def close(self) -> None:
        """Idempotent; never raises. Bytes queued just before are still written if
        the kernel takes them at once."""
        if self.closed:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
            if self._error is None:
                self._write_some()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        if self._writer_armed:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._fd)
            self._writer_armed = False
        with contextlib.suppress(Exception):
            self._port.close()
        self._out.clear()
        self._readable.set()
        self._drained.set()
