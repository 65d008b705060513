"""The GRBL simulator: the firmware model (`firmware.py`) behind a real pseudo-terminal.

The pseudo-terminal, link emulation (baud pacing, FTDI latency timer), unplug/replug
and fault injection come from `cellctl_drivers.serial`. Bytes reach the firmware model
as they arrive over the emulated wire; it keeps its own 128-byte RX buffer, so an
overflow is seen exactly where a real GRBL would lose bytes. Line noise (`corrupt_p`)
damages G-code, which GRBL answers with `error:N`: there are no checksums.

`cellctl sim grbl [--time-factor F] [--set key=value ...]` prints the device path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from ..serial import Received, SerialFirmware, SerialSimOptions
from .firmware import FirmwareConfig, GrblFirmware
from .simoptions import GrblSimOptions


class GrblSim(SerialFirmware):
    """A simulated GRBL 1.1 CNC controller behind a pseudo-terminal."""

    name: ClassVar[str] = "grbl"
    Options: ClassVar[type[SerialSimOptions]] = GrblSimOptions
    realtime: ClassVar[frozenset[int]] = frozenset(b"?!~\x18") | frozenset(range(0x80, 0x100))

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        opts = self.options
        assert isinstance(opts, GrblSimOptions)
        settings = {10: str(opts.status_mask)}
        if opts.homing:
            settings[22] = "1"
        self.firmware = GrblFirmware(
            FirmwareConfig(
                time_factor=opts.time_factor,
                settings=settings,
                build_info=opts.build_info,
                rx_size=opts.rx_buffer,
                planner_blocks=opts.planner_blocks,
                line_numbers=opts.line_numbers,
                start_alarm=opts.start_alarm,
                probe_z=opts.probe_z,
            ),
            now=time.monotonic(),
        )
        self._wake = asyncio.Event()

    # What tests look at.
    @property
    def executed(self) -> list[str]:
        return self.firmware.executed

    @property
    def counters(self) -> Any:
        return self.firmware.counters

    def boot(self) -> None:
        self._flush()

    def start_tasks(self) -> None:
        self.spawn(self._clock(), "clock")

    def on_realtime(self, byte: int) -> None:
        self.firmware.receive(bytes([byte]), time.monotonic())
        self._flush()

    def on_arrival(self, line: Received) -> bool:
        self.firmware.receive(line.data, time.monotonic())
        self._flush()
        return True  # the model keeps its own RX buffer; nothing for the base's inbox

    async def execute(self, item: Received) -> None:  # pragma: no cover - inbox unused
        self.firmware.receive(item.data, time.monotonic())
        self._flush()

    def _flush(self) -> None:
        out = self.firmware.take_output()
        if out:
            # One write for everything due: each line still passes the fault plan.
            faults = self.host.faults
            kept = [line for line in out.split(b"\r\n")[:-1] if not faults.drops(line)]
            if kept:
                self.host.write(b"".join(line + b"\r\n" for line in kept))
        self._wake.set()

    async def _clock(self) -> None:
        """Advance the model when a move or a wait ends; arrivals wake it early."""
        while True:
            now = time.monotonic()
            self.firmware.advance(now)
            self._flush()
            deadline = self.firmware.next_deadline(now)
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if timeout is not None and timeout <= 0:
                await asyncio.sleep(0)
                continue
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
