"""A base for firmware simulators behind a pseudo-terminal (Marlin, GRBL).

Subclasses implement `execute(line)` (a complete received line, its line end
removed) and may react to bytes the moment they arrive (`on_arrival`,
`realtime`), which is how emergency parsers and GRBL's realtime commands work.
Lines wait in an inbox (the firmware's receive buffer) and are taken at the
firmware's parse rate. Simulated time runs `time_factor` times faster than
the wall clock; the link itself (baud, latency) always runs in real time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import TracebackType
from typing import Any, ClassVar, Self

import structlog
from pydantic import Field

from cellctl.driver import SimOptions, TaskGroup

from .emulation import LinkTiming
from .faults import FaultPlan, Faults
from .pty_host import PtyHost, Received

log = structlog.get_logger("cellctl.serial.sim")


class SerialSimOptions(SimOptions):
    """Options every serial firmware simulator takes (flat, so `--set k=v` reaches them)."""

    emulate_link: bool = True  # False: bytes move at pseudo-terminal speed
    baud: int = Field(115200, gt=0)
    latency_ms: float = Field(16.0, ge=0)  # FTDI latency timer; 0 for native USB
    parse_rate: float = Field(2000.0, gt=0)  # lines/s the firmware can take in
    corrupt_p: float = Field(0.0, ge=0, le=1)
    corrupt_bytes: int = Field(1, ge=1)
    drop_reply_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = None

    def link_timing(self) -> LinkTiming:
        return LinkTiming(baud=self.baud, latency_ms=self.latency_ms)

    def fault_plan(self) -> FaultPlan:
        return FaultPlan(
            corrupt_p=self.corrupt_p,
            corrupt_bytes=self.corrupt_bytes,
            drop_reply_p=self.drop_reply_p,
            seed=self.seed,
        )


class SerialFirmware:
    """Owns a PtyHost and one TaskGroup; satisfies `cellctl.driver.Simulator`."""

    name: ClassVar[str] = "serial"
    Options: ClassVar[type[SerialSimOptions]] = SerialSimOptions
    # Bytes acted on the moment they arrive and removed from the stream (GRBL `?`, `!`).
    realtime: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, options: Any = None) -> None:
        self.options: SerialSimOptions = options if options is not None else self.Options()
        self.time_factor = self.options.time_factor
        self.host = PtyHost(
            self.options.link_timing(),
            Faults(self.options.fault_plan()),
            name=self.name,
            emulate=self.options.emulate_link,
        )
        self.inbox: deque[Received] = deque()
        self.inbox_bytes = 0  # bytes waiting in the receive buffer
        self.rx_lost_bytes = 0  # bytes that arrived to a full receive buffer (rx_capacity)
        self._inbox_event = asyncio.Event()
        self._tg: TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._t0 = time.monotonic()
        self._parse_debt = 0.0
        self._parse_last = 0.0
        self.log = log.bind(sim=self.name)

    # --- Simulator protocol ---

    @property
    def endpoint(self) -> str:
        return self.host.path

    @property
    def faults(self) -> Faults:
        return self.host.faults

    async def __aenter__(self) -> Self:
        await self.host.__aenter__()
        self._tg = TaskGroup()
        await self._tg.__aenter__()
        self.spawn(self._receive_loop(), "receive")
        self.spawn(self._command_loop(), "commands")
        self.start_tasks()
        self.boot()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            for task in self._tasks:
                task.cancel()
            try:
                await tg.__aexit__(None, None, None)
            except BaseException as err:  # a crashed sim task: log it, still tear down
                self.log.warning("simulator task failed", error=repr(err))
        await self.host.__aexit__(None, None, None)

    # --- hooks for subclasses ---

    def start_tasks(self) -> None:
        """Start the firmware's own background tasks (heaters, planner …) with `spawn`."""

    def boot(self) -> None:
        """Print the start-up banner; called after start and after `reset()`."""

    def on_arrival(self, line: Received) -> bool:
        """Called as each line arrives, before the inbox. Return True to consume it."""
        return False

    def on_realtime(self, byte: int) -> None:
        """Called for each byte in `realtime` as it arrives."""

    def rx_capacity(self) -> int | None:
        """Receive-buffer size in bytes; bytes arriving beyond it are lost. None: unbounded."""
        return None

    async def ready_for_line(self) -> None:
        """Wait until the firmware takes the next line out of its receive buffer
        (Marlin reads nothing while its command ring is full)."""

    async def execute(self, item: Received) -> None:
        """Process one line from the inbox (its b'\\n' still attached)."""
        raise NotImplementedError

    # --- services for subclasses ---

    def reply(self, text: str | bytes) -> None:
        self.host.write_line(text.encode() if isinstance(text, str) else text)

    def now(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._t0) * self.time_factor

    async def sim_sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.time_factor)

    def clear_inbox(self) -> None:
        self.inbox.clear()
        self.inbox_bytes = 0

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Start a task owned by the simulator's TaskGroup."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("simulator is not running")
        task = self._tg.create_task(coro, name=f"{self.name}:{name}")
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)
        return task

    # --- loops ---

    async def _receive_loop(self) -> None:
        while True:
            item = await self.host.read()
            data = item.data
            if self.realtime and any(b in self.realtime for b in data):
                for b in data:
                    if b in self.realtime:
                        self.on_realtime(b)
                data = bytes(b for b in data if b not in self.realtime)
                if not data:
                    continue
                item = Received(data, item.corrupted)
            if self.on_arrival(item):
                continue
            cap = self.rx_capacity()
            if cap is not None and self.inbox_bytes + len(item.data) > cap:
                # A full UART buffer drops what does not fit, line end included:
                # the rest merges with the next line, as on a real board.
                room = max(0, cap - self.inbox_bytes)
                self.rx_lost_bytes += len(item.data) - room
                if room == 0:
                    continue
                item = Received(item.data[:room], True)
            self.inbox.append(item)
            self.inbox_bytes += len(item.data)
            self._inbox_event.set()

    async def _next_line(self) -> Received:
        """The next inbox line, joined across partial chunks."""
        parts: list[Received] = []
        while True:
            while not self.inbox:
                self._inbox_event.clear()
                await self._inbox_event.wait()
            item = self.inbox.popleft()
            self.inbox_bytes -= len(item.data)
            parts.append(item)
            if item.data.endswith(b"\n"):
                break
        if len(parts) == 1:
            return parts[0]
        return Received(b"".join(p.data for p in parts), any(p.corrupted for p in parts))

    async def _command_loop(self) -> None:
        while True:
            await self.ready_for_line()
            item = await self._next_line()
            await self._pace_parse()
            await self.execute(item)

    async def _pace_parse(self) -> None:
        # Token bucket: sleep only once the debt is worth a timer (asyncio's
        # timers are coarse), so the average rate holds without a wake per line.
        now = time.monotonic()
        self._parse_debt = max(0.0, self._parse_debt - (now - self._parse_last))
        self._parse_last = now
        self._parse_debt += 1.0 / self.options.parse_rate
        if self._parse_debt > 0.002:
            await asyncio.sleep(self._parse_debt)
