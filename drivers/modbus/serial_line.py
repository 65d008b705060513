"""A null-modem cable between two pseudo-terminals, so the simulated PLC can speak RTU.

pymodbus's serial server opens a serial port by path, and so does the
driver's client; one pseudo-terminal cannot serve both (a port is opened
exclusively, and two readers of one side would steal each other's bytes).
So the line has two: the client's side is the serial package's `PtyHost`
(a stable path, unplug/replug), the server's side a plain pseudo-terminal
whose path pymodbus opens. Bytes are copied between the two master sides
as they come; RTU frames are binary, so nothing here looks at lines.

Unplugging the client's side loses what was on the wire: RTU is strictly
request then answer, so an answer to a request that came in before the last
unplug is dropped, never delivered to the port that was plugged in since.

Linux pseudo-terminals refuse parity (tcsetattr fails with EINVAL), so both
ends run 8N1 or 8N2 here; a real adapter takes the driver's default, 8E1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from types import TracebackType
from typing import Self

from ..serial import PtyHost


class SerialLine:
    """Async context manager: `path` for the client, `server_port` for pymodbus's server."""

    def __init__(self) -> None:
        self.host = PtyHost(name="plc", emulate=False)
        self._master: int | None = None
        self._slave: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._answering = 0  # the plug-in the request the server answers came through

    @property
    def path(self) -> str:
        return self.host.path

    @property
    def server_port(self) -> str:
        assert self._slave is not None, "SerialLine is not started"
        return os.ttyname(self._slave)

    async def __aenter__(self) -> Self:
        await self.host.__aenter__()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Our own handle on the server's side keeps its master readable (no EIO)
        # while pymodbus closes and reopens the port on a server restart.
        self._master, self._slave = master, slave
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._from_server)
        self._pump = loop.create_task(self._to_server(), name="plc-serial-line")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        await self.host.__aexit__(exc_type, exc, tb)

    def unplug_client(self) -> None:
        """Pull the client's cable and plug it back in: its open port fails (EIO) and
        the same path opens a fresh pseudo-terminal, as a USB adapter re-enumerates."""
        self.host.unplug()
        self.host.replug()

    def _from_server(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the server's port is closed for a moment (restart)
            return
        if self._answering == self.host.plugs:
            self.host.write(data)

    async def _to_server(self) -> None:
        while True:
            item = await self.host.read()
            self._answering = self.host.plugs
            if self._master is not None:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._master, item.data)
