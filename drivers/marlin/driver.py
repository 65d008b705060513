"""Marlin 3D printers over serial: a loss-free, pipelined G-code streamer.

Every line goes out framed (`N<n> <cmd>*<xor>`) and stays in a resend window
until the firmware acknowledges it. With ADVANCED_OK (`ok N<n> P<p> B<b>`)
as many lines stay in flight as the firmware's command ring holds. Without
it (stock Marlin) the window counts bytes and lines in flight against the
firmware's receive buffer (`rx_buffer` less `rx_margin`) and command ring
(`queue_lines`), so it never overflows the buffer. Sending is driven by the
reader: each `ok` frees room and the next line is written in the same
callback, so an `ok` costs no scheduling round trip. `M112` goes out ahead of
everything queued.

Stock Marlin's `ok` carries no line number, so it is counted. Whether an
`ok` follows `Resend:` differs by version (2.1: yes; some 2.0.x: no; 2.0.0:
usually): it is detected per connection with one deliberately damaged line
at connect (`ok_after_resend` overrides). The count is checked against what
the firmware states outright: `Resend: n` / `Last Line: n` (it accepted
every line before n), `ok N<n>` (ADVANCED_OK) and the `ok T:` of an `M105`
line (it ran that line). A `Resend:` for a line already counted as
acknowledged fails the step; and a step is `done` only when an `M105` sent
after the last line (and an `M400`) is answered with its `ok T:`: the
firmware accepts line n only after every line before it, so that answer
proves that it accepted the whole program, once and in order.

State mapping (machine → PackML):

| Marlin / host situation                              | PackML state |
|------------------------------------------------------|--------------|
| port closed, handshake not done, link lost           | UNAVAILABLE  |
| connected, no job                                    | IDLE         |
| streaming a job (incl. M109/M190 waits, homing)      | EXECUTE      |
| pause asked: draining the window, park G-code        | HOLDING      |
| paused by the host, or M0/M1/M600 / busy: paused for user | HELD    |
| resume asked: resume G-code                          | UNHOLDING    |
| cancel asked: cancel G-code                          | STOPPING     |
| killed (M112, thermal runaway, `Printer halted`)     | ABORTED      |
| reset asked (M999 / DTR pulse), new handshake        | RESETTING    |

After a cancel the printer is ready for the next job, so STOPPING leads
straight to IDLE. After a kill only `reset()` leaves ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from cellctl.driver import (
    DriverContext,
    DriverOptions,
    ProgressSink,
    StartProblem,
    StateTracker,
    TaskGroup,
)
from cellctl.errors import CellError, DeviceFault, LinkError, StepFailed, WrongDevice
from cellctl.model import (
    Alarm,
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricType,
    OperatorRequest,
    Progress,
    RequestKind,
    Sample,
    Samples,
    Setup,
    Step,
    StepOutcome,
    StepResult,
)

from ..serial import SerialLink, port_problems
from .feed import JobFeed, MachineState
from .gcode import checksum, code_of, frame
from .replies import LineError, LineErrorKind, classify

DEFAULT_PREAMBLE = (
    "M140 S{bed}",
    "M104 S{hotend}",
    "M190 S{bed}",
    "M109 S{hotend}",
    "G28 X Y",
    "G90",
    "{e_mode}",
    "G92 E{e}",
)


class MarlinOptions(DriverOptions):
    port: str = ""  # e.g. /dev/serial/by-id/usb-…; the simulator's path with backend = "sim"
    baud: int = Field(115200, gt=0)
    allow_reset: bool = False  # let opening the port pulse DTR (resets AVR boards)
    expected_uuid: str | None = None  # refuse the port if M115 reports another UUID
    expected_name: str | None = None  # … or a FIRMWARE_NAME / MACHINE_TYPE without this text
    boot_timeout_s: float = Field(8.0, gt=0)  # wait this long for the firmware to answer
    in_flight: int | None = Field(None, ge=1)  # lines in flight; None: ADVANCED_OK, else counted
    max_in_flight: int = Field(32, ge=1)
    rx_buffer: int = Field(128, ge=32)  # the firmware's RX_BUFFER_SIZE (bytes)
    rx_margin: int = Field(1, ge=0)  # a ring buffer holds one byte less than its size
    queue_lines: int = Field(4, ge=1)  # the firmware's BUFSIZE (command ring)
    max_line: int = Field(95, ge=16)  # MAX_CMD_SIZE - 1: longest line as sent, `N… *cs` in
    max_resends: int = Field(10, ge=1)  # errors for one line before the step fails
    resend_quiet_ms: float = Field(3.0, ge=0)  # after a `Resend:` (counted window): see _hold
    ok_after_resend: bool | None = None  # does `ok` follow `Resend:`? None: detect at connect
    busy_interval_s: int = Field(2, ge=0, le=60)  # M113; 0 keeps the firmware's
    ok_timeout_s: float = Field(6.0, gt=0)  # silence (no ok/busy) before re-sending
    ok_timeout_no_keepalive_s: float = Field(60.0, gt=0)
    temp_interval_s: int = Field(1, ge=1)  # M155 autoreport, or M105 polling
    position_interval_s: float = Field(2.0, ge=0)  # M114 (+ M220/M221); 0 = never
    progress_interval_s: float = Field(0.5, gt=0)
    deadman_s: int = Field(0, ge=0)  # M85 during jobs; 0 = not armed
    pause_gcode: tuple[str, ...] = ("M400", "G91", "G1 Z5 F600", "G90")
    resume_gcode: tuple[str, ...] = ("G91", "G1 Z-5 F600", "G90")
    cancel_gcode: tuple[str, ...] = ("M104 S0", "M140 S0", "M107", "G91", "G1 Z5 F600", "G90")
    resume_preamble: tuple[str, ...] = DEFAULT_PREAMBLE
    reset_method: Literal["m999", "dtr"] = "m999"

    @model_validator(mode="after")
    def _line_fits_window(self) -> Self:
        if self.max_line > self.rx_buffer - self.rx_margin:
            raise ValueError(
                f"max_line ({self.max_line}) must fit the receive window "
                f"(rx_buffer - rx_margin = {self.rx_buffer - self.rx_margin})"
            )
        return self

    def start_problems(self, backend: str) -> list[StartProblem]:
        return port_problems(self.port, backend)

    @field_validator("resume_preamble")
    @classmethod
    def _known_placeholders(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for line in v:
            try:
                line.format_map(MachineState().placeholders())
            except (KeyError, ValueError, IndexError) as exc:
                known = ", ".join("{" + k + "}" for k in MachineState().placeholders())
                raise ValueError(f"{line!r}: unknown placeholder {exc}; known: {known}") from None
        return v


METRICS = (
    MetricSpec("hotend_temp", MetricType.FLOAT, "degC"),
    MetricSpec("hotend_target", MetricType.FLOAT, "degC"),
    MetricSpec("hotend_power", MetricType.INT, "", "heater PWM 0..127"),
    MetricSpec("bed_temp", MetricType.FLOAT, "degC"),
    MetricSpec("bed_target", MetricType.FLOAT, "degC"),
    MetricSpec("bed_power", MetricType.INT, "", "heater PWM 0..127"),
    MetricSpec("pos_x", MetricType.FLOAT, "mm"),
    MetricSpec("pos_y", MetricType.FLOAT, "mm"),
    MetricSpec("pos_z", MetricType.FLOAT, "mm"),
    MetricSpec("pos_e", MetricType.FLOAT, "mm"),
    MetricSpec("feed_pct", MetricType.INT, "%"),
    MetricSpec("flow_pct", MetricType.INT, "%"),
    MetricSpec("current_line", MetricType.INT, "", "last file line the firmware acknowledged"),
    MetricSpec("firmware", MetricType.STRING),
    MetricSpec("machine_type", MetricType.STRING),
    MetricSpec("uuid", MetricType.STRING),
    MetricSpec("resends", MetricType.INT, "", "lines re-sent since connect"),
)

_TEMP = re.compile(r"\b(T|B)\d?:\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)")
_POWER = re.compile(r"(?<![A-Z])(B?)@:\s*(\d+)")
_AXIS = re.compile(r"\b([XYZE]):\s*(-?[\d.]+)")
_N = re.compile(r"\bN(-?\d+)")
_B = re.compile(r"\bB(\d+)")


@dataclass
class Sent:
    n: int
    data: bytes
    command: str
    file_line: int | None = None  # job lines only
    end_offset: int = 0
    done: asyncio.Future[None] | None = None  # host commands someone waits for
    resends: int = 0  # errors about this line itself, and timeouts
    echoes: int = 0  # line-number errors while it was the line asked for
    proof: bool = False  # `done` only on the firmware's own word, never on a counted `ok`


@dataclass
class Job:
    step: Step
    feed: JobFeed
    started: float = field(default_factory=time.monotonic)
    outcome: StepOutcome | None = None
    message: str = ""
    last_line: int | None = None
    bytes_done: int = 0
    lines_done: int = 0
    user_hold: bool = False


@dataclass
class _Probe:
    resend_seen: bool = False
    oks: int = 0  # bare `ok`s after the `Resend:`


@dataclass
class FirmwareInfo:
    name: str = ""
    machine_type: str = ""
    uuid: str = ""
    caps: dict[str, bool] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [self.name or "unknown firmware"]
        if self.machine_type:
            parts.append(f"machine {self.machine_type!r}")
        if self.uuid:
            parts.append(f"UUID {self.uuid}")
        return ", ".join(parts)


class MarlinDriver:
    """Marlin printer over USB serial: framed, windowed, resumable G-code streaming."""

    name: ClassVar[str] = "marlin"
    Options: ClassVar[type[MarlinOptions]] = MarlinOptions
    simulator: ClassVar[str] = "marlin"

    def __init__(self, ctx: DriverContext, options: Any) -> None:
        self.ctx = ctx
        self.opt: MarlinOptions = options
        self.log = ctx.logger()
        self._state = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self.link: SerialLink | None = None
        self.info = FirmwareInfo()
        self._serving = False
        self._lost: LinkError | None = None
        self._changed = asyncio.Event()
        self._in_handshake = False
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._reset_protocol()
        self.window_size = 1
        self.byte_limit: int | None = None  # framed bytes in flight (the receive buffer)
        self.advanced_ok = False
        self.resend_ok = True  # an `ok` follows `Resend:` (set per connection)
        self._resyncing = False
        self._probe: _Probe | None = None
        self._firmware_error = ""
        self._max_b = -1
        self._keepalive = False
        self._job: Job | None = None
        self._feeding = False
        self._killed = False
        self.resends_total = 0
        self._last_sent_at = 0.0
        self._sent = asyncio.Event()  # set when lines go out: wakes the ok watchdog

    # --- protocol bookkeeping ---

    def _reset_protocol(self) -> None:
        self._window: dict[int, Sent] = {}
        self._next_n = 1
        self._send_ptr = 1
        self._acked = 0
        self._host_q: deque[Sent] = deque()
        self._line_error: LineError | None = None  # the error the next `Resend:` answers
        self._expect_resend_ok = False  # the next line, if a bare `ok`, belongs to a `Resend:`
        self._m105s: deque[int] = deque()  # numbers of M105 lines, whose `ok T:` names them
        self._unproven: dict[int, Sent] = {}  # counted as acknowledged, waiting for proof
        self._bytes = 0  # framed bytes of the lines in flight
        self._quiet_until = 0.0  # after a `Resend:`, nothing goes out before this (monotonic)
        self._echo_n = 0  # the line a `Resend:` asked for (counted window) …
        self._echoes_left = 0  # … and how many lines sent behind it may still echo that request
        self._end_quiet_timer()
        self._oob_pending = 0
        self._last_progress = time.monotonic()
        self._last_error = ""
        self._dirty = False  # a stream fault left lines the firmware may still answer

    @property
    def in_flight(self) -> int:
        return self._send_ptr - 1 - self._acked

    @property
    def window_full(self) -> bool:
        """The window holds all it may: the next line waits for an `ok`."""
        return self.in_flight >= self.window_size or self._send_ptr < self._next_n

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def _until(self, pred: Callable[[], bool], limit_s: float | None, what: str) -> None:
        """Wait for pred(); read lines ourselves when serve() is not running yet."""
        async with asyncio.timeout(limit_s):
            while not pred():
                if self._lost is not None:
                    raise self._lost
                if self._serving:
                    await self._changed.wait()
                else:
                    assert self.link is not None
                    try:
                        line = await self.link.readline()
                    except LinkError as exc:
                        self._lost = exc
                        raise
                    self._handle(line)

    # --- context manager ---

    async def __aenter__(self) -> Self:
        path = self.ctx.endpoint or self.opt.port
        if not path:
            raise LinkError(f"{self.ctx.device_id}: no serial port configured (option `port`)")
        self.link = await SerialLink.open(path, self.opt.baud, allow_reset=self.opt.allow_reset)
        try:
            await self._handshake()
        except BaseException:
            await self.link.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end_quiet_timer()
        link, self.link = self.link, None
        if link is not None:
            if not link.closed and link.error is None and self.info.caps.get("AUTOREPORT_TEMP"):
                with contextlib.suppress(Exception):
                    # unnumbered, so it never disturbs line numbering; best effort
                    link.write_nowait(b"M155 S0\n")
                    async with asyncio.timeout(0.5):
                        await link.drain()
            await link.close()
        if self._lost is None:
            self._lost = LinkError("disconnected")
        self._state.set(DeviceState.UNAVAILABLE, "disconnected")
        self._notify()

    async def _handshake(self) -> None:
        self._reset_protocol()
        self._in_handshake = True
        self._killed = False
        self._max_b = -1
        assert self.link is not None
        # A printer that did not reset may still run what an earlier connection
        # queued, and answer it: an `ok` of those must not pass for M110's.
        deadline = time.monotonic() + self.opt.boot_timeout_s
        await self._quiet(0.2, self.opt.boot_timeout_s)
        # M110 N0 as line 0 resets the firmware's counter; repeat until it answers
        # (a board that resets on open is still booting for a second or two).
        answered = False
        while time.monotonic() < deadline:
            self._reset_protocol()
            self._next_n = self._send_ptr = 0
            self._acked = -1
            fut = self._queue_host("M110 N0", wait=True)
            try:
                await self._until(fut.done, min(1.5, max(0.1, deadline - time.monotonic())), "")
                answered = True
                break
            except TimeoutError:
                continue
        if not answered:
            raise LinkError(
                f"{self.link.path}: no answer from the firmware within {self.opt.boot_timeout_s} s"
                " (wrong baud rate, or halted after M112/a kill: reset or power-cycle it)"
            )
        self.info = FirmwareInfo()
        await self._command("M115", 5.0)
        self._check_identity()
        if self.info.caps.get("ADVANCED_OK") or self._max_b >= 0:
            self.advanced_ok = True
        if self.opt.busy_interval_s > 0:
            # The short ok timeout applies once a `busy:` line proves the firmware
            # has keepalive (an old one answers M113 with `Unknown command`).
            await self._command(f"M113 S{self.opt.busy_interval_s}", 5.0)
        if self.opt.deadman_s > 0:
            await self._command("M85 S0", 5.0)  # a timer left armed by an interrupted job
        if self.info.caps.get("AUTOREPORT_TEMP"):
            await self._command(f"M155 S{self.opt.temp_interval_s}", 5.0)
        if self.opt.ok_after_resend is not None:
            self.resend_ok = self.opt.ok_after_resend
        elif not self.advanced_ok:
            self.resend_ok = await self._probe_resend_ok()
        self._choose_window()
        self._in_handshake = False
        self._state.set(DeviceState.ABORTED if self._killed else DeviceState.IDLE, "connected")
        self.log.info(
            "marlin connected",
            firmware=self.info.describe(),
            advanced_ok=self.advanced_ok,
            ok_after_resend=self.resend_ok,
            window=self.window_size,
            window_bytes=self.byte_limit,
        )
        self._emit_samples(
            [
                Sample("firmware", self.info.name),
                Sample("machine_type", self.info.machine_type),
                Sample("uuid", self.info.uuid),
            ]
        )

    async def _quiet(self, quiet_s: float, bound_s: float) -> None:
        """Wait until the firmware has sent no `ok`, `Resend:` or `busy:` for quiet_s."""
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            mark = self._last_progress
            try:
                await self._until(partial(self._progress_since, mark), quiet_s, "quiet")
            except TimeoutError:
                return

    def _choose_window(self) -> None:
        if self.opt.in_flight is not None:
            self.window_size = self.opt.in_flight
        elif self.advanced_ok and self._max_b >= 0:
            self.window_size = max(1, min(self.opt.max_in_flight, self._max_b + 1))
        else:
            self.window_size = self.opt.queue_lines
        # Lines waiting for a free ring slot wait in the receive buffer, ADVANCED_OK
        # or not, and what does not fit there is lost: count the bytes too.
        self.byte_limit = self.opt.rx_buffer - self.opt.rx_margin

    async def _probe_resend_ok(self) -> bool:
        """Send one line with a wrong checksum, then an M105: count the bare `ok`s
        between the firmware's `Resend:` and the M105's `ok T:`."""
        assert self.link is not None
        probe = _Probe()
        self._probe = probe
        try:
            body = f"N{self._next_n} M105".encode()
            self.link.write_nowait(body + b"*%d\n" % (checksum(body) ^ 0x55))
            self._last_sent_at = time.monotonic()
            try:
                await self._until(lambda: probe.resend_seen, 3.0, "probe")
            except TimeoutError:
                self.log.warning("no `Resend:` for a damaged line; assuming an `ok` follows one")
                return True
            await self._command("M105", 5.0)
            return probe.oks > 0
        finally:
            self._probe = None

    def _check_identity(self) -> None:
        found = self.info.describe()
        path = self.link.path if self.link else "?"
        want_uuid = self.opt.expected_uuid
        if want_uuid and self.info.uuid.lower() != want_uuid.lower():
            raise WrongDevice(
                f"{path}: expected the printer with UUID {want_uuid}, found {found}; "
                "refusing to use this port"
            )
        want_name = self.opt.expected_name
        if want_name and want_name.lower() not in (
            f"{self.info.name} {self.info.machine_type}".lower()
        ):
            raise WrongDevice(
                f"{path}: expected a printer named {want_name!r}, found {found}; "
                "refusing to use this port"
            )

    async def _command(self, command: str, limit_s: float) -> None:
        fut = self._queue_host(command, wait=True)
        try:
            await self._until(fut.done, limit_s, command)
        except TimeoutError as exc:
            raise LinkError(f"no `ok` for {command} within {limit_s} s") from exc

    # --- serve: reader, pollers, watchdog ---

    async def serve(self) -> None:
        if self.link is None:
            raise LinkError("not connected")
        self._serving = True
        try:
            async with TaskGroup() as tg:
                tg.create_task(self._reader(), name=f"{self.ctx.device_id}:reader")
                tg.create_task(self._pollers(), name=f"{self.ctx.device_id}:pollers")
                tg.create_task(self._watchdog(), name=f"{self.ctx.device_id}:watchdog")
        except BaseExceptionGroup as eg:
            first = _first(eg, CellError)
            if first is not None:
                raise first from None
            raise
        finally:
            self._serving = False
            self._notify()

    async def _reader(self) -> None:
        assert self.link is not None
        link = self.link
        while True:
            try:
                line = await link.readline()
            except LinkError as exc:
                self._link_lost(exc)
                raise
            try:
                self._handle(line)
            except _FirmwareRestarted as exc:
                err = LinkError(str(exc))
                self._link_lost(err)
                raise err from None
            if not link.lines_waiting:
                link.flush()  # every `ok` read so far is handled: send its lines now

    def _link_lost(self, exc: LinkError) -> None:
        self._lost = exc
        self._feeding = False
        job = self._job
        if job is not None and job.outcome is None:
            job.outcome = StepOutcome.INTERRUPTED
            job.message = f"link lost: {exc}"
        self._state.set(DeviceState.UNAVAILABLE, str(exc))
        self._notify()

    async def _pollers(self) -> None:
        next_temp = next_pos = time.monotonic()
        while True:
            await asyncio.sleep(self._poll_pause(next_temp, next_pos))
            if self._killed:
                continue
            now = time.monotonic()
            queued = {s.command for s in self._host_q}
            if not self.info.caps.get("AUTOREPORT_TEMP") and now >= next_temp:
                next_temp = now + self.opt.temp_interval_s
                if "M105" not in queued:
                    self._queue_host("M105")
            if self.opt.position_interval_s > 0 and now >= next_pos:
                next_pos = now + self.opt.position_interval_s
                for cmd in ("M114", "M220", "M221"):
                    if cmd not in queued:
                        self._queue_host(cmd)
            if (
                self.opt.deadman_s > 0
                and self._job is not None
                and now - self._last_sent_at > self.opt.deadman_s / 3
                and not self._host_q
            ):
                self._queue_host("M105")  # keeps the M85 timer from firing while we wait

    def _poll_pause(self, next_temp: float, next_pos: float) -> float:
        """Until the next poll is due, 0.1–1 s: an idle printer's loop wakes once a second
        or at its position interval, not ten times a second (issue 27: idle CPU)."""
        longest = 1.0
        due: list[float] = []  # monotonic times
        if not self.info.caps.get("AUTOREPORT_TEMP"):
            due.append(next_temp)
        if self.opt.position_interval_s > 0:
            due.append(next_pos)
        if self.opt.deadman_s > 0:
            longest = min(longest, self.opt.deadman_s / 6)  # a job may start meanwhile
            if self._job is not None:
                due.append(self._last_sent_at + self.opt.deadman_s / 3)
        soonest = min(due, default=math.inf) - time.monotonic()
        return max(0.1, min(longest, soonest))

    async def _watchdog(self) -> None:
        while True:
            if self.in_flight <= 0 and not self._killed:
                # Nothing awaits an answer: wait for the next line out, not 4 looks a second.
                self._sent.clear()
                await self._sent.wait()
            await asyncio.sleep(0.25)
            if self._killed or self.in_flight <= 0:
                continue
            limit = self.opt.ok_timeout_s if self._keepalive else self.opt.ok_timeout_no_keepalive_s
            silent = time.monotonic() - self._last_progress
            if silent > limit:
                first = self._acked + 1
                self.log.warning(
                    "no answer from the firmware; re-sending", line=first, silent_s=silent
                )
                self._last_progress = time.monotonic()
                self._echoes_left = 0
                self._rewind(first, reason="timeout")

    # --- sending ---

    def _queue_host(
        self, command: str, wait: bool = False, proof: bool = False
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._host_q.append(Sent(-1, b"", command, done=fut if wait else None, proof=proof))
        if not wait:
            fut.set_result(None)
        self._pump()
        return fut

    def _pump(self) -> None:
        """Fill the window: re-sends first, then host commands, then job lines."""
        link = self.link
        if link is None or self._lost is not None or self._killed:
            return
        if self._quiet_until and self._held():
            return
        out: list[bytes] = []
        limit = self.byte_limit
        try:
            while self.in_flight < self.window_size:
                if self._send_ptr < self._next_n:
                    entry = self._window[self._send_ptr]
                elif self._host_q:
                    entry = self._host_q.popleft()
                    self._assign(entry)
                elif self._feeding and self._job is not None:
                    nxt = self._job.feed.next()
                    if nxt is None:
                        self._feeding = False
                        self._notify()
                        break
                    line_no, command, end = nxt
                    entry = Sent(-1, b"", command, file_line=line_no, end_offset=end)
                    if len(frame(self._next_n, command)) - 1 > self.opt.max_line:
                        self._fault(self._too_long(line_no, command, self._next_n))
                        break
                    self._assign(entry)
                else:
                    break
                size = len(entry.data)
                if limit is not None and self._bytes + size > limit and self.in_flight > 0:
                    break  # assigned, not sent: it goes first when room frees
                now = time.monotonic()
                if self.in_flight == 0:
                    self._last_progress = now  # silence counts from the first line out
                out.append(entry.data)
                self._bytes += size
                self._send_ptr += 1
                self._last_sent_at = now
            if out:
                link.write_nowait(b"".join(out))
                self._sent.set()
        except LinkError as exc:
            self._link_lost(exc)

    def _hold(self, n: int) -> None:
        """Send nothing until the lines sent after line n have arrived.

        Marlin empties its receive buffer when it asks for line n again, but lines
        still on the way land after that, and each is refused with another
        `Resend: n`. Re-sent lines that shared the buffer with them would be
        emptied again, and their bytes would overflow it. Each new request for n
        restarts the wait, so the re-sent lines go out behind the last stale one."""
        if n != self._echo_n:
            self._echoes_left = 0
        self._echo_n = n
        self._echoes_left += sum(1 for k in range(n + 1, self._send_ptr) if k in self._window)
        stale = sum(len(e.data) for k in range(n, self._send_ptr) if (e := self._window.get(k)))
        wire_s = stale * 10 / self.opt.baud
        self._quiet_until = time.monotonic() + 2 * wire_s + self.opt.resend_quiet_ms / 1000

    def _an_echo(self, n: int, error: LineError | None) -> bool:
        """A line-number `Resend: n` from a line that was sent behind line n before
        the first request for n. Its echo may reach us after line n went out again
        (the adapter's latency timer holds replies, not our writes): answering it
        would send line n twice more, and the copies refuse each other."""
        if self.advanced_ok or n != self._echo_n or self._echoes_left <= 0:
            return False
        if error is None or error.kind != LineErrorKind.LINE_NUMBER:
            return False
        self._echoes_left -= 1
        return True

    def _held(self) -> bool:
        """Whether the quiet after a `Resend:` still runs; its end pumps again."""
        wait = self._quiet_until - time.monotonic()
        if wait <= 0:
            self._quiet_until = 0.0
            return False
        if self._quiet_timer is None or self._quiet_timer.cancelled():
            self._quiet_timer = asyncio.get_running_loop().call_later(wait, self._quiet_over)
        return True

    def _quiet_over(self) -> None:
        self._quiet_timer = None
        self._pump()

    def _end_quiet_timer(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None

    def _assign(self, entry: Sent) -> None:
        entry.n = self._next_n
        entry.data = frame(entry.n, entry.command)
        self._window[entry.n] = entry
        self._next_n += 1
        if code_of(entry.command) == "M105":
            self._m105s.append(entry.n)

    def _too_long(self, file_line: int, command: str, n: int) -> str:
        framed = len(frame(n, command)) - 1
        return (
            f"file line {file_line} is {framed} characters as sent (`N{n} … *cs` included), "
            f"over the printer's max_line {self.opt.max_line}: the firmware would cut it "
            f"and its checksum: `{_shown(command)}`"
        )

    def _rewind(self, n: int, reason: str, counts: bool = True) -> None:
        """Send again from line n. `counts`: the line itself failed (bad checksum,
        no answer); otherwise a line-number error, which the lines in flight behind
        a bad one echo, so it weighs 1/(window+1)."""
        entry = self._window.get(n)
        if entry is None:
            return
        if counts:
            entry.resends += 1
        else:
            entry.echoes += 1
        self.resends_total += 1
        echo_limit = self.opt.max_resends * (self.window_size + 1)
        if entry.resends > self.opt.max_resends or entry.echoes > echo_limit:
            where = f" (file line {entry.file_line})" if entry.file_line else ""
            times = entry.resends if entry.resends > self.opt.max_resends else entry.echoes
            self._fault(
                f"line {n}{where} `{_shown(entry.command)}` failed {times - 1} times "
                f"({reason}; last error: {self._last_error or 'none'})"
            )
            return
        self._send_ptr = n
        self._bytes = sum(len(self._window[k].data) for k in range(self._acked + 1, n))
        self._pump()

    def _fault(self, message: str) -> None:
        self.log.error("marlin stream fault", error=message)
        self._feeding = False
        self._dirty = True
        job = self._job
        if job is not None and job.outcome is None:
            job.outcome = StepOutcome.FAILED
            job.message = message
        self._notify()

    def _ack_through(self, n: int, proven: bool = False) -> None:
        """Lines up to n are acknowledged: by counting `ok`s, or `proven` by the
        firmware's own word (then waiting `proof` entries up to n are done too)."""
        job = self._job
        if proven and self._unproven:
            self._prove_through(n)
        for k in range(self._acked + 1, n + 1):
            entry = self._window.pop(k, None)
            if entry is None:
                continue
            if k < self._send_ptr:
                self._bytes -= len(entry.data)
            if entry.proof and not proven:
                self._unproven[k] = entry
                continue
            if entry.file_line is not None and job is not None:
                job.last_line = entry.file_line
                job.bytes_done = entry.end_offset
                job.lines_done += 1
                if job.user_hold and code_of(entry.command) in ("M0", "M1", "M600"):
                    self._end_user_hold()
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(None)
        self._acked = n
        if self._echoes_left and n >= self._echo_n:
            self._echoes_left = 0  # the re-sent line ran: every line before it was read
        if self._send_ptr <= n:
            self._send_ptr = n + 1
            self._bytes = 0

    def _prove_through(self, n: int) -> None:
        for k in sorted(k for k in self._unproven if k <= n):
            entry = self._unproven.pop(k)
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(None)

    # --- receiving ---

    def _handle(self, raw: bytes) -> None:
        s = raw.decode("ascii", "replace").strip()
        if not s:
            return
        try:
            self._dispatch(s)
        except (ValueError, IndexError, OverflowError) as exc:  # garbage: log it, go on
            self.log.warning("unparseable line from the printer", line=s[:200], error=str(exc))

    def _dispatch(self, s: str) -> None:
        expect, self._expect_resend_ok = self._expect_resend_ok, False
        if expect and s == "ok":
            # Taken as the `ok` Marlin prints after `Resend:`. Were it a line's (2.0.0
            # omits that `ok` at times), the count would lag one line behind: an M105,
            # whose `ok T:` names its own line, sets it right.
            if not self.advanced_ok and not self._m105s and self._probe is None:
                self._queue_host("M105")
            return
        if s.startswith("ok"):
            self._on_ok(s)
        elif s.startswith("Resend:") or s.startswith("rs "):
            self._on_resend(s)
        elif s.startswith("Error:") or s.startswith("!!"):
            self._on_error(s)
        elif "busy:" in s[:12]:
            self._on_busy(s)
        elif s.startswith("FIRMWARE_NAME:"):
            self._on_m115(s)
        elif s.startswith("Cap:"):
            name, _, value = s[4:].partition(":")
            self.info.caps[name.strip()] = value.strip() == "1"
        elif s == "start":
            self._on_start()
        elif "T:" in s and "/" in s:
            if " W:" in s:
                self._last_progress = time.monotonic()  # M109/M190 is waiting: alive
            self._on_temps(s)
        elif s.startswith("X:") and "Y:" in s:
            self._on_position(s)
        elif s.startswith("FR:"):
            with contextlib.suppress(ValueError):
                self._emit_samples([Sample("feed_pct", int(s[3:].rstrip("%").strip()))])
        elif "Flow:" in s:
            with contextlib.suppress(ValueError):
                flow = int(s.split("Flow:")[1].strip().rstrip("%"))
                self._emit_samples([Sample("flow_pct", flow)])
        elif s.startswith("//action:"):
            self._on_action(s[9:].strip())
        else:
            self.log.debug("marlin says", line=s[:200])

    def _on_ok(self, s: str) -> None:
        now = time.monotonic()
        self._last_progress = now
        rest = s[2:]
        probe = self._probe
        if probe is not None and probe.resend_seen and not rest.strip():
            probe.oks += 1
            return
        m = _N.search(rest)
        b = _B.search(rest)
        if b is not None:
            self._max_b = max(self._max_b, int(b.group(1)))
        if "T:" in rest:
            self._on_temps(rest)
            if self._m105s:
                # M105 answers `ok T:…` itself, after every line before it ran.
                k = self._m105s.popleft()
                if k > self._acked:
                    self._ack_through(k, proven=True)
                else:
                    self._prove_through(k)
            elif self.in_flight > 0 and not self.advanced_ok:
                self._ack_through(self._acked + 1)
        elif m is not None:
            self.advanced_ok = True
            n = int(m.group(1))
            if self._acked < n < self._send_ptr:
                self._ack_through(n, proven=True)
        elif self._oob_pending > 0:
            self._oob_pending -= 1
        elif self.advanced_ok:
            pass  # an `ok` without N in ADVANCED_OK mode answers no numbered line
        elif self.in_flight > 0:
            self._ack_through(self._acked + 1)
        self._pump()
        self._notify()

    def _on_resend(self, s: str) -> None:
        self._last_progress = time.monotonic()
        error, self._line_error = self._line_error, None
        digits = re.search(r"(\d+)", s)
        if digits is None:
            return
        n = int(digits.group(1))
        if self._probe is not None:
            self._probe.resend_seen = True
            return
        self._expect_resend_ok = self.resend_ok
        if self._resyncing:
            return
        if self._an_echo(n, error):
            return
        if n <= self._acked:
            # The firmware never accepted line n, yet an `ok` was counted for it (or
            # its line counter went back): what it ran can no longer be matched.
            entry = self._window.get(n) or self._unproven.get(n)
            where = f" (file line {entry.file_line})" if entry and entry.file_line else ""
            self._fault(
                f"the printer asks for line {n}{where} again, which was counted as "
                f"acknowledged (through line {self._acked}); stopped: the lines it ran "
                f"cannot be matched with the program"
                + (f" (last error: {error.text})" if error else "")
            )
            return
        if n > self._next_n:
            self._fault(
                f"the printer asks for line {n}, but only lines up to {self._next_n - 1} "
                "were sent: its line counter does not match the host's"
            )
            return
        if n >= self._send_ptr:
            if n - 1 > self._acked:
                # The firmware has every line we sent (it asks for the next one): their
                # `ok`s were lost. This is how a re-send after a timeout ends.
                self._ack_through(n - 1, proven=True)
                self._pump()
                self._notify()
            return
        # Every request is honoured: the firmware empties its receive buffer with
        # each error, so lines re-sent after an earlier request may be gone. Its
        # line-number check keeps anything from running twice.
        counts = error is None or error.kind != LineErrorKind.LINE_NUMBER
        if not self.advanced_ok:
            self._hold(n)
        self._rewind(n, reason="resend requested", counts=counts)
        self._notify()

    def _on_error(self, s: str) -> None:
        text = s.split(":", 1)[1].strip() if ":" in s else s
        line_error = classify(text)
        if line_error is not None:
            self._line_error = line_error
            self._last_error = text
            self.log.debug("marlin line error", error=text)
            return
        low = text.lower()
        if "halted" in low or "kill" in low or "shutdown" in low:
            self._on_killed(text)
            return
        self.log.warning("marlin error", error=text)
        self._firmware_error = text  # the reason, when `Printer halted` follows
        self.ctx.emit(Alarm(self.ctx.device_id, "marlin_error", text))

    def _on_killed(self, text: str) -> None:
        if "halted" in text.lower() and self._firmware_error:
            text = f"{self._firmware_error} ({text})"
        if not self._killed:
            self.log.error("printer aborted", cause=text)
            self.ctx.emit(Alarm(self.ctx.device_id, "killed", text))
        self._killed = True
        self._feeding = False
        self._host_q.clear()
        for entry in self._window.values():
            if entry.done is not None and not entry.done.done():
                entry.done.set_exception(DeviceFault(f"printer halted: {text}"))
        job = self._job
        if job is not None and job.outcome is None:
            job.outcome = StepOutcome.FAILED
            job.message = f"printer halted: {text}"
        self._state.set(DeviceState.ABORTED, text)
        self._notify()

    def _on_busy(self, s: str) -> None:
        self._last_progress = time.monotonic()
        self._keepalive = True
        self._notify()
        job = self._job
        if "paused for user" in s or "paused for input" in s:
            if job is not None and not job.user_hold and job.outcome is None:
                job.user_hold = True
                last = self._pending_user_command()
                kind = RequestKind.LOAD_MATERIAL if last == "M600" else RequestKind.ACKNOWLEDGE
                text = {
                    "M600": "filament change: load the new filament, then resume",
                    "M0": "the program waits for the operator (M0): resume to go on",
                    "M1": "the program waits for the operator (M1): resume to go on",
                }.get(last, "the printer waits for the operator: resume to go on")
                self._state.set(DeviceState.HELD, text)
                self.ctx.emit(
                    OperatorRequest(
                        self.ctx.device_id,
                        kind,
                        text,
                        step_key=job.step.key,
                        details={"line": job.last_line or 0, "command": last},
                    )
                )
        elif job is not None and job.user_hold:
            self._end_user_hold()

    def _pending_user_command(self) -> str:
        for k in range(self._acked + 1, self._send_ptr):
            entry = self._window.get(k)
            if entry is not None:
                code = code_of(entry.command)
                if code in ("M0", "M1", "M600"):
                    return code
        return ""

    def _end_user_hold(self) -> None:
        job = self._job
        if job is not None and job.user_hold:
            job.user_hold = False
            if self._state.state in (DeviceState.HELD, DeviceState.UNHOLDING):
                self._state.set(DeviceState.EXECUTE, "operator resumed")

    def _on_m115(self, s: str) -> None:
        keys = ("FIRMWARE_NAME", "SOURCE_CODE_URL", "PROTOCOL_VERSION", "MACHINE_TYPE",
                "EXTRUDER_COUNT", "UUID")  # fmt: skip
        pattern = re.compile("(" + "|".join(keys) + "):")
        parts = pattern.split(s)
        fields = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
        self.info.name = fields.get("FIRMWARE_NAME", "")
        self.info.machine_type = fields.get("MACHINE_TYPE", "")
        self.info.uuid = fields.get("UUID", "")

    def _on_start(self) -> None:
        if self._in_handshake:
            return
        raise _FirmwareRestarted("the firmware restarted (reset or watchdog); reconnecting")

    def _on_temps(self, s: str) -> None:
        samples: list[Sample] = []
        for m in _TEMP.finditer(s):
            heater = "hotend" if m.group(1) == "T" else "bed"
            with contextlib.suppress(ValueError):
                samples.append(Sample(f"{heater}_temp", float(m.group(2))))
                samples.append(Sample(f"{heater}_target", float(m.group(3))))
        for m in _POWER.finditer(s):
            heater = "bed" if m.group(1) == "B" else "hotend"
            samples.append(Sample(f"{heater}_power", int(m.group(2))))
        if samples:
            self._emit_samples(_dedupe(samples))

    def _on_position(self, s: str) -> None:
        head = s.split("Count")[0]
        samples = [
            Sample(f"pos_{m.group(1).lower()}", float(m.group(2))) for m in _AXIS.finditer(head)
        ]
        if samples:
            self._emit_samples(_dedupe(samples))

    def _on_action(self, action: str) -> None:
        self.log.info("host action from the printer", action=action)
        if action.startswith("cancel") and self._job is not None and self._job.outcome is None:
            self._job.outcome = StepOutcome.CANCELLED
            self._job.message = "cancelled on the printer"
            self._feeding = False
            self._notify()

    def _emit_samples(self, samples: Sequence[Sample]) -> None:
        self.ctx.emit(Samples(self.ctx.device_id, tuple(samples)))

    # --- the Driver contract ---

    def metrics(self) -> Sequence[MetricSpec]:
        return METRICS

    def status(self) -> DeviceStatus:
        return DeviceStatus(self._state.state, detail=self._state.reason)

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        if self._lost is not None or self.link is None:
            raise LinkError(f"{self.ctx.device_id} is not connected")
        if self._state.state != DeviceState.IDLE or self._job is not None:
            return StepResult(StepOutcome.FAILED, f"printer is {self._state.state.label}, not idle")
        if step.program.path is None:
            return StepResult(StepOutcome.FAILED, "a Marlin step needs a G-code file")
        try:
            # a whole-file read: off the event loop, which streams to other printers
            await asyncio.to_thread(self._check_lines, step, self._next_n)
            feed = JobFeed(step.program.path, step.start_line)
        except StepFailed as exc:
            return StepResult(StepOutcome.FAILED, str(exc))
        job = Job(step, feed)
        self._job = job
        self._last_error = ""
        self._state.set(DeviceState.EXECUTE, f"job {step.key}")
        try:
            if self.opt.deadman_s > 0:
                self._queue_host(f"M85 S{self.opt.deadman_s}")
            if step.start_line > 1:
                values = feed.before.placeholders()
                for template in self.opt.resume_preamble:
                    self._queue_host(template.format_map(values))
                job.last_line = step.start_line - 1
            self._feeding = True
            self._pump()
            await self._stream(job, progress)
            if job.outcome is None:
                # done = the moves have finished (M400), and the firmware's own answer
                # to the M105 after it proves that it accepted every line before.
                self._queue_host("M400")
                fence = self._queue_host("M105", wait=True, proof=True)
                await self._await_job(job, fence.done, progress)
            outcome = job.outcome or StepOutcome.DONE
            if outcome == StepOutcome.DONE:
                job.bytes_done = job.feed.total  # trailing comments count as done too
            self._report(job, progress)
            if outcome == StepOutcome.DONE:
                self._state.set(DeviceState.IDLE, f"job {step.key} done")
            return StepResult(outcome, job.message, last_line=job.last_line)
        finally:
            self._feeding = False
            feed.close()
            self._job = None
            if self._dirty and self._lost is None and not self._killed:
                await self._resync()
            if self.opt.deadman_s > 0 and self._lost is None and not self._killed:
                self._queue_host("M85 S0")  # cancelled or failed: disarm all the same
            if self._state.state in (DeviceState.EXECUTE, DeviceState.HELD, DeviceState.HOLDING):
                if self._lost is None and not self._killed:
                    self._state.set(DeviceState.IDLE, "job ended")

    async def _resync(self) -> None:
        """After a stream fault: let the firmware answer what is still in flight,
        then number lines from 0 again and prove it with an M105 (three tries).
        Failing that, the link is closed, and the supervisor reconnects with a full
        handshake."""
        try:
            for attempt in range(3):
                self._resyncing = True
                self._drop_window(StepFailed("the stream stopped before this command was sent"))
                await self._quiet(0.5, 15.0)
                self._reset_protocol()
                self._next_n = self._send_ptr = 0
                self._acked = -1
                self._resyncing = False
                # Nothing may follow M110 until it has run: it sets the counter again
                # when it runs, undoing lines accepted after it (as Marlin's M110 does).
                m110 = self._queue_host("M110 N0", wait=True)
                with contextlib.suppress(TimeoutError):
                    await self._until(partial(self._settled, m110), 5.0, "resync")
                fence = self._queue_host("M105", wait=True, proof=True)
                with contextlib.suppress(TimeoutError):
                    await self._until(partial(self._settled, fence), 5.0, "resync")
                if m110.done() and fence.done() and not self._dirty:
                    self.log.info("line numbering resynchronised after a stream fault")
                    return
                self.log.warning("resynchronising with the printer failed", attempt=attempt + 1)
            raise LinkError("no consistent answer to M110 N0 + M105")
        except (CellError, TimeoutError) as exc:
            self.log.error("could not resynchronise with the printer; reconnecting", error=str(exc))
            self._dirty = False
            if self.link is not None:
                await self.link.close()
        finally:
            self._resyncing = False

    def _settled(self, fut: asyncio.Future[None]) -> bool:
        return fut.done() or self._dirty

    def _progress_since(self, mark: float) -> bool:
        return self._last_progress != mark

    def _drop_window(self, why: CellError) -> None:
        for entry in [*self._window.values(), *self._host_q, *self._unproven.values()]:
            if entry.done is not None and not entry.done.done():
                entry.done.set_exception(why)
        self._window.clear()
        self._host_q.clear()
        self._unproven.clear()
        self._acked = self._next_n - 1
        self._send_ptr = self._next_n
        self._bytes = 0

    def _check_lines(self, step: Step, first_n: int) -> None:
        """Pre-flight: every line fits the firmware's line buffer as sent and has no
        control bytes (Marlin ends a line at CR too). Raises StepFailed naming it."""
        assert step.program.path is not None
        feed = JobFeed(step.program.path, step.start_line)
        try:
            n = first_n
            while (nxt := feed.next()) is not None:
                line_no, command, _ = nxt
                n += 1
                bad = next((c for c in command if ord(c) < 32 or ord(c) == 127), None)
                if bad is not None:
                    raise StepFailed(
                        f"file line {line_no} holds the control byte {bad!r}: `{_shown(command)}`"
                    )
                # the number this line gets, one digit to spare for host commands between
                if len(frame(n * 10, command)) - 1 > self.opt.max_line:
                    raise StepFailed(self._too_long(line_no, command, n * 10))
        finally:
            feed.close()

    async def preflight(self, step: Step) -> None:
        if step.program.path is None:
            raise StepFailed("a Marlin step needs a G-code file")
        await asyncio.to_thread(self._check_lines, step, self._next_n)

    async def _stream(self, job: Job, progress: ProgressSink) -> None:
        await self._await_job(
            job,
            lambda: job.feed.exhausted and not self._job_lines_in_window(),
            progress,
        )

    def _job_lines_in_window(self) -> bool:
        return any(e.file_line is not None for e in self._window.values())

    async def _await_job(self, job: Job, pred: Callable[[], bool], progress: ProgressSink) -> None:
        next_report = 0.0
        while True:
            if job.outcome is not None:
                return
            held = (DeviceState.HOLDING, DeviceState.HELD, DeviceState.UNHOLDING)
            if pred() and self._state.state not in held:
                return
            now = time.monotonic()
            if now >= next_report:
                self._report(job, progress)
                next_report = now + self.opt.progress_interval_s
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, next_report - now)):
                    await changed.wait()

    def _report(self, job: Job, progress: ProgressSink) -> None:
        total = job.feed.total
        fraction = job.bytes_done / total if total else None
        elapsed = time.monotonic() - job.started
        remaining = None
        if fraction and fraction > 0.001:
            remaining = elapsed * (1 - fraction) / fraction
        elif job.step.estimated_s is not None:
            remaining = job.step.estimated_s
        progress(
            Progress(
                fraction=fraction,
                bytes_done=job.bytes_done,
                bytes_total=total,
                lines_done=job.lines_done,
                last_acked_line=job.last_line,
                remaining_s=remaining,
            )
        )
        if job.last_line is not None:
            self._emit_samples(
                [Sample("current_line", job.last_line), Sample("resends", self.resends_total)]
            )

    async def _host_sequence(self, commands: Sequence[str], limit_s: float = 60.0) -> None:
        futs = [self._queue_host(c, wait=True) for c in commands]
        if futs:
            await self._until(lambda: all(f.done() for f in futs), limit_s, "host commands")
            for f in futs:
                exc = f.exception()
                if exc is not None:
                    raise exc

    async def pause(self) -> None:
        job = self._job
        if job is None or job.outcome is not None:
            return
        if self._state.state != DeviceState.EXECUTE or job.user_hold:
            return
        self._state.set(DeviceState.HOLDING, "pause requested")
        self._feeding = False
        await self._until(
            lambda: not self._job_lines_in_window() or job.outcome is not None, 120.0, "drain"
        )
        await self._host_sequence(self.opt.pause_gcode)
        if job.outcome is None:
            self._state.set(DeviceState.HELD, "paused by the host")

    async def resume(self) -> None:
        job = self._job
        if job is None or job.outcome is not None:
            return
        if job.user_hold:
            self._send_oob(b"M108\n")  # ends M0/M1/M600 waits on the printer
            self._end_user_hold()
            return
        if self._state.state not in (DeviceState.HELD, DeviceState.HOLDING):
            return
        self._state.set(DeviceState.UNHOLDING, "resume requested")
        await self._host_sequence(self.opt.resume_gcode)
        if job.outcome is None:
            self._state.set(DeviceState.EXECUTE, "resumed")
            self._feeding = True
            self._pump()
            self._notify()

    def _send_oob(self, data: bytes) -> None:
        """An unnumbered command ahead of the queue (the emergency parser acts on it)."""
        if self.link is None:
            raise LinkError("not connected")
        self.link.write_nowait(data, urgent=True)
        self._oob_pending += 1

    async def stop(self) -> None:
        job = self._job
        if job is None or job.outcome is not None:
            return
        job.outcome = StepOutcome.CANCELLED
        job.message = "cancelled"
        self._feeding = False
        self._state.set(DeviceState.STOPPING, "cancel requested")
        self._notify()
        self._send_oob(b"M108\n")  # break a heating or operator wait first
        try:
            await self._host_sequence(self.opt.cancel_gcode)
        finally:
            if not self._killed and self._lost is None:
                self._state.set(DeviceState.IDLE, "cancelled")

    async def emergency_stop(self) -> None:
        if self.link is None:
            raise LinkError("not connected")
        self.link.write_nowait(b"M112\n", urgent=True)
        self._on_killed("emergency stop (M112) sent by cellctl")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await self.link.drain()

    async def reset(self) -> None:
        if self.link is None:
            raise LinkError("not connected")
        self._state.set(DeviceState.RESETTING, f"reset ({self.opt.reset_method})")
        self._in_handshake = True  # the banner that follows is expected
        if self.opt.reset_method == "dtr":
            await self.link.pulse_dtr()
        else:
            self.link.write_nowait(b"M999\n", urgent=True)
        self._killed = False
        await asyncio.sleep(0.05)
        await self._handshake()

    async def change_setup(self, to: Setup) -> None:
        from cellctl.errors import NotSupported

        raise NotSupported("a Marlin printer's material or nozzle is changed by an operator")

    async def maintenance(self, lines: Sequence[str]) -> list[str]:
        """Privileged lines outside a job (cellctl/maintenance.py): each framed and
        acknowledged like a host command; an `Error:` the firmware prints for one stops
        the rest."""
        from cellctl.maintenance import MaintenanceRefused

        self._check_privileged(lines)
        if self._killed or self._lost is not None or self._job is not None:
            raise MaintenanceRefused("the printer is not idle and connected")
        return await self._send_privileged(lines)

    async def lines_while_working(self, lines: Sequence[str]) -> list[str]:
        """Lines in between a running job's own (host lines go first into the window,
        as OctoPrint sends a command during a print); the job goes on. For a
        preparation declared `while_working` (a second tool's heater)."""
        from cellctl.maintenance import MaintenanceRefused

        self._check_privileged(lines)
        if self._killed or self._lost is not None:
            raise MaintenanceRefused("the printer is not connected")
        return await self._send_privileged(lines)

    def _check_privileged(self, lines: Sequence[str]) -> None:
        from cellctl.maintenance import MaintenanceRefused

        for i, line in enumerate(lines, 1):
            code = code_of(line)
            if code in _NOT_MAINTENANCE:
                raise MaintenanceRefused(f"line {i} `{_shown(line)}`: {_NOT_MAINTENANCE[code]}")
            framed = len(frame(self._next_n + i, line)) - 1
            if framed > self.opt.max_line:
                raise MaintenanceRefused(
                    f"line {i} is {framed} characters as sent, over max_line {self.opt.max_line}"
                )

    async def _send_privileged(self, lines: Sequence[str]) -> list[str]:
        from cellctl.maintenance import MaintenanceRefused

        answers: list[str] = []
        for i, line in enumerate(lines, 1):
            self._firmware_error = ""
            await self._host_sequence([line], limit_s=60.0)
            if self._firmware_error:
                ran = f"lines 1-{i - 1} ran" if i > 1 else "no line before it"
                raise MaintenanceRefused(
                    f"line {i} `{_shown(line)}`: the printer said {self._firmware_error!r}; "
                    f"{ran}, the rest was not sent"
                )
            answers.append("ok")
        return answers


# Lines that would break the link or the driver's bookkeeping even in maintenance.
_NOT_MAINTENANCE = {
    "M110": "renumbers lines under the driver; it numbers them itself",
    "M112": "kills the firmware; use `cellctl estop`",
    "M999": "restarts the firmware; use `cellctl reset`",
    "M28": "writes what follows to SD: the next lines would be stored, not run",
    "M29": "ends an SD write this command never starts",
    "M0": "waits for a button press on the printer",
    "M1": "waits for a button press on the printer",
    "M600": "waits for a filament change at the printer",
}


class _FirmwareRestarted(Exception):
    pass


def _first(eg: BaseExceptionGroup[Any], kind: type[CellError]) -> CellError | None:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
        elif isinstance(exc, kind):
            return exc
    return None


def _shown(command: str, limit: int = 80) -> str:
    """A command as a log or a reason may show it: escaped, at most `limit` characters."""
    text = command.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dedupe(samples: list[Sample]) -> list[Sample]:
    seen: dict[str, Sample] = {}
    for s in samples:
        seen[s.name] = s
    return list(seen.values())
