"""GRBL 1.1 CNC controllers over serial: character-counting streaming, tool changes, `$C`.

Connecting never resets the board (DTR stays low); a soft reset (0x18) is sent only when
`soft_reset_on_connect` is set. The driver then synchronises on `$I` (its `[VER:…]` line
is unique, so stale output from an earlier session cannot be mistaken for an answer),
reads `$$`, checks the expected version and machine name (`$I` build info) and asks `?`.

Streaming counts characters: every line sent and not yet answered stays within the
RX buffer (128 bytes; grblHAL's size from `[OPT:…]`), and EEPROM-writing commands go
one at a time (send-response). `M6` lines are held back: the stream waits for the
motion before them to finish (`G4 P0`), then the device is Held for the tool change.

| GRBL state                       | PackML state                         |
|----------------------------------|--------------------------------------|
| Idle                             | Idle (Execute while a step runs)     |
| Run, Jog, Home                   | Execute                              |
| Check (`$C` pre-flight)          | Starting                             |
| Hold:1 (decelerating)            | Holding                              |
| Hold:0, tool change (M6) waiting | Held                                 |
| Door:0..3                        | Suspended (waiting for an interlock) |
| Alarm at connect, Sleep          | Stopped                              |
| Alarm during work, after e-stop  | Aborted (until `reset()`)            |

Emergency stop is GRBL's soft reset (0x18): motion stops at once and, if the machine was
moving, GRBL reports `ALARM:3` (position possibly lost). The device stays Aborted until
`reset()`, which soft-resets to flush anything in flight and then homes (`$H`, when homing
is enabled and the alarm lost position) or unlocks (`$X`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator

from cellctl.driver import (
    DriverContext,
    DriverOptions,
    ProgressSink,
    StartProblem,
    StateTracker,
)
from cellctl.errors import (
    CellError,
    DeviceFault,
    LinkError,
    NotSupported,
    StepFailed,
    WrongDevice,
)
from cellctl.model import (
    Alarm,
    DeviceMode,
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricType,
    OperatorRequest,
    ProgramKind,
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
from . import codes
from .protocol import (
    MAX_LINE_CHARS,
    RT_HOLD,
    RT_RESET,
    RT_RESUME,
    RT_STATUS,
    RX_BUFFER_DEFAULT,
    BuildInfo,
    CharWindow,
    Reply,
    ReplyKind,
    StatusReport,
    StatusTracker,
    build_info_changes,
    classify,
    clean_line,
    needs_send_response,
    parse_build_info,
    parse_setting,
    parse_status,
    stored_build_info,
    tool_change,
    tool_select,
)

SYNC_LINE = "G4P0"  # answered only once every planned move has finished
AXIS_NAMES = "xyzabc"


class GrblOptions(DriverOptions):
    """`[devices.<id>]` keys of a GRBL machine."""

    port: str = ""  # e.g. /dev/serial/by-id/usb-...; the simulator's path with backend="sim"
    baud: int = Field(115200, gt=0)
    soft_reset_on_connect: bool = False
    expected_version: str | None = None  # prefix of the `[VER:…]` version, e.g. "1.1"
    expected_build_info: str | None = None  # the machine name stored with `$I=`
    # character_counting keeps GRBL's RX buffer full; send_response (one line in flight)
    # is the slow, safe mode some shops insist on.
    streaming: Literal["character_counting", "send_response"] = "character_counting"
    poll_hz: float = Field(5.0, gt=0, le=5.0)  # `?` status polls; GRBL asks for ≤ 5 Hz
    rx_buffer: int | None = Field(None, ge=16)  # override the RX size `$I` reports
    preflight: bool = False  # run every program through `$C` check mode before cutting
    # Automatic tool changer: lines run at each M6 (`{tool}` is replaced); empty: operator.
    tool_change_macro: tuple[str, ...] = ()
    # Run after every tool change, e.g. ("G38.2 Z-60 F200", "G10 L20 P1 Z0", "G0 Z5").
    tool_probe_macro: tuple[str, ...] = ()
    home_on_reset: bool = True  # reset() homes when homing is enabled and position was lost
    handshake_timeout_s: float = Field(5.0, gt=0)
    # GRBL idle this long while lines are unanswered means an `ok` was lost: fail the step.
    answer_timeout_s: float = Field(3.0, gt=0)
    command_timeout_s: float = Field(30.0, gt=0)  # `$H`, a stop's hold and reset …

    @field_validator("tool_change_macro", "tool_probe_macro")
    @classmethod
    def _macro_lines(cls, lines: tuple[str, ...]) -> tuple[str, ...]:
        # Checked here, not when a tool change is half done: GRBL would drop a
        # non-ASCII byte (or act on it: 0x84 opens the door) and act on `?` `!` `~`.
        for i, raw in enumerate(lines):
            if not raw.isascii():
                raise ValueError(f"line {i + 1} {raw!r}: GRBL takes ASCII only")
            line = clean_line(raw.replace("{tool}", "255"))
            if any(c in line for c in "?!~\x18"):
                raise ValueError(f"line {i + 1} {raw!r}: ? ! ~ are GRBL realtime commands")
            if len(line) > MAX_LINE_CHARS:
                raise ValueError(
                    f"line {i + 1} {raw!r}: {len(line)} characters without spaces and "
                    f"comments; GRBL takes at most {MAX_LINE_CHARS}"
                )
        return lines

    def warnings(self) -> list[str]:
        name = self.expected_build_info
        if name is None:
            return []
        why = build_info_changes(name)
        if not why:
            return []
        stored = stored_build_info(name)
        if stored is None:
            return [
                f"expected_build_info: {name!r} cannot be stored with `$I=` ({'; '.join(why)}); "
                "no GRBL can report it"
            ]
        return [
            f"expected_build_info: GRBL stores `$I={name}` as {stored!r} ({'; '.join(why)}); "
            f"the machine is checked against {stored!r}"
        ]
    def start_problems(self, backend: str) -> list[StartProblem]:
        return port_problems(self.port, backend)


class Flushed(CellError):
    """GRBL dropped a line before answering it (reset, alarm)."""


@dataclass
class Answer:
    reply: Reply
    feedback: list[Reply] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reply.kind == ReplyKind.OK


@dataclass
class _Pending:
    nbytes: int
    line: str
    future: asyncio.Future[Answer]
    reset_after: bool = False  # `$C` off: GRBL soft-resets right after its `ok`
    lineno: int | None = None  # program line of a job's line
    sent_at: float | None = None  # loop time its last byte was written


@dataclass
class _Sent:
    lineno: int
    line: str
    future: asyncio.Future[Answer]


class GrblDriver:
    """GRBL 1.1 / grblHAL CNC controller over USB serial."""

    name: ClassVar[str] = "grbl"
    Options: ClassVar[type[DriverOptions]] = GrblOptions
    simulator: ClassVar[str] = "grbl"

    def __init__(self, ctx: DriverContext, options: GrblOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.log = ctx.logger()
        self.path = ctx.endpoint or options.port
        self._tracker = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self._link: SerialLink | None = None
        self.window = CharWindow(RX_BUFFER_DEFAULT)
        self._pending: deque[_Pending] = deque()
        self._feedback: list[Reply] = []
        self._changed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._serving = False
        self._link_error: LinkError | None = None
        self._epoch = 0
        self._resetting = False  # a soft reset is on its way: send nothing until the banner
        self._banners = 0
        self.status_report: StatusReport | None = None
        self._reports = 0
        self.status_tracker = StatusTracker()
        self.settings: dict[int, str] = {}
        self.build = BuildInfo()
        self._axes = 3
        self._last_alarm: int | None = None
        self._aborted: str | None = None  # why we are Aborted, until reset()
        self._startup_alarm: str | None = None
        self._running: Step | None = None
        self._tool: int | None = None
        self._tool_wait: asyncio.Future[None] | None = None
        self._tool_wanted: int | None = None
        self._stopping = False
        self._last_acked_line: int | None = None
        self._last_answer_at = 0.0
        # The step preflight() passed last: run() does not check it again (the job
        # service's program_check and `preflight = true` make one `$C` per step).
        self._checked: Step | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()  # constructed anywhere; used only while connected

    # --- status -------------------------------------------------------------------

    def _derive(self) -> tuple[DeviceState, str]:
        if self._link is None:
            return DeviceState.UNAVAILABLE, ""
        if self._aborted is not None:
            return DeviceState.ABORTED, self._aborted
        report = self.status_report
        machine = report.state if report else "Idle"
        if machine == "Alarm":
            if self._startup_alarm is not None:
                return DeviceState.STOPPED, self._startup_alarm
            return DeviceState.ABORTED, self._alarm_reason()
        if machine == "Door":
            return DeviceState.SUSPENDED, f"safety door (Door:{report.substate if report else 0})"
        if machine == "Hold":
            if report is not None and report.substate == 1:
                return DeviceState.HOLDING, "feed hold: decelerating"
            return DeviceState.HELD, "feed hold"
        if self._tool_wait is not None:
            return DeviceState.HELD, f"tool change: insert T{self._tool_wanted}"
        if machine == "Check":
            return DeviceState.STARTING, "pre-flight ($C check mode)"
        if machine == "Sleep":
            return DeviceState.STOPPED, "sleep"
        if self._running is not None or machine in ("Run", "Jog", "Home"):
            return DeviceState.EXECUTE, machine.lower()
        return DeviceState.IDLE, ""

    def _update_state(self) -> None:
        state, reason = self._derive()
        self._tracker.set(state, reason)

    def _alarm_reason(self) -> str:
        if self._last_alarm is not None:
            return codes.describe_alarm(self._last_alarm)
        return "alarm lock: homing required ('$H' homes, '$X' unlocks)"

    @property
    def last_acked_line(self) -> int | None:
        """Program line of the last `ok` of the running (or last) step."""
        return self._last_acked_line

    def status(self) -> DeviceStatus:
        setup = {"tool": f"T{self._tool}"} if self._tool is not None else {}
        mode = DeviceMode.SETUP if self._tool_wait is not None else DeviceMode.PRODUCTION
        return DeviceStatus(self._tracker.state, mode, self._tracker.reason, setup)

    def metrics(self) -> Sequence[MetricSpec]:
        f, s = MetricType.FLOAT, MetricType.STRING
        specs = [MetricSpec("state", s, description="GRBL machine state (Idle, Run, Hold:0 …)")]
        for kind in ("mpos", "wpos"):
            for axis in AXIS_NAMES[: self._axes]:
                specs.append(MetricSpec(f"{kind}_{axis}", f, "mm"))
        specs += [
            MetricSpec("feed", f, "mm/min"),
            MetricSpec("spindle", f, "rpm"),
            MetricSpec("feed_override", MetricType.INT, "%"),
            MetricSpec("rapid_override", MetricType.INT, "%"),
            MetricSpec("spindle_override", MetricType.INT, "%"),
            MetricSpec("pins", s, description="active input pins (Pn:)"),
        ]
        if self._reports_buffer:
            specs += [
                MetricSpec("planner_free", MetricType.INT, "blocks"),
                MetricSpec("rx_free", MetricType.INT, "bytes"),
            ]
        if self.build.line_numbers:
            specs.append(MetricSpec("line", MetricType.INT))
        return specs

    @property
    def _reports_buffer(self) -> bool:
        try:
            return bool(int(float(self.settings.get(10, "1"))) & 2)
        except ValueError:
            return False

    # --- connect ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if not self.path:
            raise LinkError(f"{self.ctx.device_id}: no serial port configured (key `port`)")
        self._link = await SerialLink.open(self.path, self.options.baud)
        try:
            async with asyncio.timeout(self.options.handshake_timeout_s):
                await self._handshake()
        except TimeoutError:
            await self._close()
            raise LinkError(
                f"{self.path}: no GRBL handshake within {self.options.handshake_timeout_s:g} s"
            ) from None
        except BaseException:
            await self._close()
            raise
        self._update_state()
        return self

    async def _pump(self, until: Callable[[], bool]) -> None:
        """Before serve() runs, read and handle lines here until `until()` holds."""
        assert self._link is not None
        while not until():
            self._handle(await self._link.readline())

    async def _handshake(self) -> None:
        assert self._link is not None
        if self.options.soft_reset_on_connect:
            banners = self._banners
            self._link.write_nowait(RT_RESET)
            await self._pump(lambda: self._banners > banners)
        # Synchronise: answers that are still on their way from an earlier session are
        # skipped until the `[VER:…]` of our own `$I` shows up, followed by its `ok`.
        foreign = 0
        while True:
            seen: list[Reply] = []
            done = asyncio.Event()
            self._sync_hook = (seen, done)
            self._link.write_nowait(b"$I\n")
            await self._pump(done.is_set)
            self._sync_hook = None
            if any(r.tag == "VER" for r in seen):
                self.build = parse_build_info(seen)
                break
            if any(r.kind == ReplyKind.ERROR and r.code == 8 for r in seen):
                # GRBL is still busy (a job from before we connected): `$I` needs it idle.
                await asyncio.sleep(0.25)
                continue
            foreign += 1
            if foreign >= 3:
                raise WrongDevice(
                    f"{self.path}: `$I` got no [VER:…] answer: not a GRBL controller?"
                )
        size = self.options.rx_buffer or self.build.rx_buffer or RX_BUFFER_DEFAULT
        self.window = CharWindow(size)
        answer = await self._command("$$")
        for r in answer.feedback:
            kv = parse_setting(r.text)
            if kv:
                self.settings[kv[0]] = kv[1]
        self._check_identity()
        reports = self._reports
        self._link.write_nowait(RT_STATUS)
        await self._pump(lambda: self._reports > reports)
        report = self.status_report
        if (
            self.options.rx_buffer is None
            and self.build.rx_buffer is None
            and report is not None
            and report.rx_free
            and report.state in ("Idle", "Alarm")
        ):
            # Older builds leave the size out of `[OPT:…]`; an idle `Bf:` shows it free.
            size = report.rx_free
            self.window = CharWindow(size)
        if self.status_report is not None and self.status_report.state == "Alarm":
            self._startup_alarm = f"in alarm at connect: {self._alarm_reason()}"
            self.ctx.emit(Alarm(self.ctx.device_id, self._alarm_code(), self._startup_alarm))
        self.log.info(
            "grbl connected",
            version=self.build.version,
            machine=self.build.info,
            rx_buffer=size,
            state=self.status_report.state if self.status_report else None,
        )

    _sync_hook: tuple[list[Reply], asyncio.Event] | None = None

    def _check_identity(self) -> None:
        want_v, want_i = self.options.expected_version, self.options.expected_build_info
        if want_v is not None and not self.build.version.startswith(want_v):
            raise WrongDevice(
                f"{self.path}: expected GRBL {want_v}, found {self.build.version or '?'}"
            )
        if want_i is None:
            return
        # GRBL normalises `$I=mill-1` to MILL-1 before storing it: compare the stored forms
        # (also of the answer, for firmware that keeps the case).
        want = stored_build_info(want_i)
        if want is None or want != stored_build_info(self.build.info):
            stored = f" (stored by GRBL as {want!r})" if want not in (None, want_i) else ""
            raise WrongDevice(
                f"{self.path}: expected machine {want_i!r}{stored}, found {self.build.info!r} ($I)"
            )

    def _alarm_code(self) -> str:
        return f"ALARM:{self._last_alarm}" if self._last_alarm is not None else "ALARM"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        link, self._link = self._link, None
        self._fail_pending(LinkError(f"{self.path}: closed"))
        if link is not None:
            with contextlib.suppress(Exception):
                await link.close()
        self._tracker.set(DeviceState.UNAVAILABLE, "disconnected")

    # --- background I/O -----------------------------------------------------------

    async def serve(self) -> None:
        """Read replies and poll `?` until the link is lost (LinkError) or cancelled."""
        link = self._link
        if link is None:
            raise LinkError(f"{self.ctx.device_id}: not connected")
        self._serving = True
        period = 1.0 / self.options.poll_hz
        next_poll = self._loop.time()
        try:
            while True:
                now = self._loop.time()
                if now >= next_poll:
                    link.write_nowait(RT_STATUS, urgent=True)
                    next_poll = max(next_poll + period, now + period / 2)
                try:
                    async with asyncio.timeout_at(next_poll):
                        line = await link.readline()
                except TimeoutError:
                    continue
                self._handle(line)
        except LinkError as exc:
            self._link_error = exc
            self._fail_pending(exc)
            raise
        finally:
            self._serving = False
            self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def _until(self, pred: Callable[[], bool], within: float | None = None) -> None:
        async with asyncio.timeout(within):
            while not pred():
                if self._link_error is not None:
                    raise self._link_error
                if self._link is None:
                    raise LinkError(f"{self.path}: closed")
                if not self._serving:
                    self._handle(await self._link.readline())
                    continue
                self._changed.clear()
                await self._changed.wait()

    # --- replies ------------------------------------------------------------------

    def _handle(self, raw: bytes) -> None:
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            self.log.warning("garbage from the controller", data=raw[:80].hex())
            return
        if not text:
            return
        reply = classify(text)
        if self._sync_hook is not None:
            seen, done = self._sync_hook
            if reply.kind in (ReplyKind.FEEDBACK, ReplyKind.OTHER):
                seen.append(reply)
            elif reply.kind == ReplyKind.ERROR:
                seen.append(reply)
                done.set()
                return
            elif reply.kind == ReplyKind.OK:
                # Only an `ok` after some output ends an attempt: a bare `ok` is a stale
                # answer to a line sent before we connected (GRBL answers in order).
                if seen:
                    done.set()
                return
        kind = reply.kind
        if kind in (ReplyKind.OK, ReplyKind.ERROR):
            self._on_answer(reply)
        elif kind == ReplyKind.STATUS:
            self._on_status(reply.text)
        elif kind == ReplyKind.ALARM:
            self._on_alarm(reply.code or 0)
        elif kind == ReplyKind.BANNER:
            self._on_banner(reply)
        elif kind == ReplyKind.MESSAGE:
            self.log.info("grbl message", msg=reply.text)
            self._feedback.append(reply)
        elif kind in (ReplyKind.FEEDBACK, ReplyKind.SETTING):
            if reply.tag == "PRB":
                self.log.info("probe", result=reply.text)
            self._feedback.append(reply)
        else:
            self.log.warning("unexpected line from the controller", line=text[:120])

    def _on_answer(self, reply: Reply) -> None:
        feedback, self._feedback = self._feedback, []
        if self._resetting or not self._pending:
            self.log.debug("answer for no pending line", reply=reply.text)
            return
        p = self._pending.popleft()
        self.window.pop()
        self._last_answer_at = self._loop.time()
        if p.reset_after:
            self._resetting = True  # GRBL resets right after this `ok`: wait for its banner
        if p.lineno is not None and reply.kind == ReplyKind.OK:
            self._last_acked_line = p.lineno
        if not p.future.done():
            p.future.set_result(Answer(reply, feedback))
        self._notify()

    def _on_status(self, text: str) -> None:
        try:
            report = parse_status(text)
        except ValueError as exc:
            self.log.warning("bad status report", report=text[:120], error=str(exc))
            return
        self.status_tracker.update(report)
        self.status_report = report
        if report.mpos is not None or report.wpos is not None:
            self._axes = len(report.mpos or report.wpos or ())
        self._reports += 1
        if report.state != "Alarm" and self._startup_alarm is not None:
            self._startup_alarm = None
        self._check_lost_answers(report)
        self._emit_samples(report)
        self._update_state()
        self._notify()

    def _check_lost_answers(self, report: StatusReport) -> None:
        """GRBL idle while the oldest line sent has waited long for its answer (and no
        answer came meanwhile): an `ok` was lost on the link, and GRBL has no resend.
        Waiting longer would hang the job, so the lines are failed, saying why."""
        if report.state != "Idle" or not self._pending or self._resetting:
            return
        head = self._pending[0]
        if head.sent_at is None or head.line.upper().startswith("G4"):
            return  # still going out, or a dwell (GRBL reports Idle while it dwells)
        now = self._loop.time()
        if now - max(head.sent_at, self._last_answer_at) < self.options.answer_timeout_s:
            return
        n = len(self._pending)
        self.log.error("answers lost: GRBL is idle with lines unanswered", unanswered=n)
        self._flush_epoch(Flushed(f"lost answer: GRBL is idle but {n} line(s) stayed unanswered"))

    def _emit_samples(self, report: StatusReport) -> None:
        t = self.status_tracker
        now = time.time()
        state = report.state + (f":{report.substate}" if report.substate is not None else "")
        out: list[Sample] = [Sample("state", state, now)]
        for kind, vec in (("mpos", t.mpos), ("wpos", t.wpos)):
            for axis, value in zip(AXIS_NAMES[: self._axes], vec, strict=False):
                out.append(Sample(f"{kind}_{axis}", round(value, 4), now))
        if report.feed is not None:
            out.append(Sample("feed", report.feed, now))
        if report.spindle is not None:
            out.append(Sample("spindle", report.spindle, now))
        fo, ro, so = t.overrides
        out += [
            Sample("feed_override", fo, now),
            Sample("rapid_override", ro, now),
            Sample("spindle_override", so, now),
            Sample("pins", t.pins, now),
        ]
        if report.planner_free is not None and self._reports_buffer:
            out.append(Sample("planner_free", report.planner_free, now))
            out.append(Sample("rx_free", report.rx_free or 0, now))
        if report.line is not None and self.build.line_numbers:
            out.append(Sample("line", report.line, now))
        self.ctx.emit(Samples(self.ctx.device_id, tuple(out)))

    def _on_alarm(self, code: int) -> None:
        self._last_alarm = code
        text = codes.describe_alarm(code)
        self.log.warning("grbl alarm", alarm=text)
        self.ctx.emit(Alarm(self.ctx.device_id, f"ALARM:{code}", text))
        if self._link is not None and self._sync_hook is None and self._serving:
            # GRBL flushed its buffers: nothing in flight will be answered.
            self._aborted = self._aborted or text
            self._flush_epoch(Flushed(text))
        self._update_state()

    def _on_banner(self, reply: Reply) -> None:
        self._banners += 1
        expected = self._resetting
        self._resetting = False
        if not expected and (self._pending or self._running is not None):
            self.log.warning("controller reset unexpectedly", banner=reply.text)
            self._aborted = self._aborted or "controller reset unexpectedly"
        self._flush_epoch(Flushed(f"controller reset ({reply.text})"))
        self._update_state()

    def _flush_epoch(self, exc: Exception) -> None:
        self._epoch += 1
        self._fail_pending(exc)
        self._feedback.clear()

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, deque()
        self.window.clear()
        futures: list[asyncio.Future[Any]] = [p.future for p in pending]
        if self._tool_wait is not None:
            futures.append(self._tool_wait)
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                # Whoever waits still gets it; nobody waiting is not an error to log.
                fut.exception()
        self._notify()

    # --- sending ------------------------------------------------------------------

    def _write(self, data: bytes, urgent: bool = False) -> None:
        if self._link_error is not None:
            raise self._link_error
        if self._link is None:
            raise LinkError(f"{self.path}: not connected")
        self._link.write_nowait(data, urgent=urgent)

    def _write_reset(self) -> None:
        """0x18 behind everything already queued, written now: GRBL then drops those
        bytes with the rest of its buffer. (Ahead of them, they would run after it.)"""
        self._write(RT_RESET)
        assert self._link is not None
        self._link.flush()

    async def _send(
        self,
        line: str,
        *,
        epoch: int | None = None,
        reset_after: bool = False,
        lineno: int | None = None,
    ) -> asyncio.Future[Answer]:
        """Queue one line under character counting; EEPROM writers go alone (send-response).

        Raises Flushed when `epoch` is given and GRBL was reset or alarmed meanwhile: a job
        never sends into a controller that forgot what came before."""
        data = line.encode("ascii") + b"\n"
        n = len(data)
        alone = (
            self.options.streaming == "send_response"
            or needs_send_response(line)
            or reset_after
            or n > self.window.size
        )
        async with self._send_lock:

            def ready() -> bool:
                if self._resetting:
                    return False
                if epoch is not None and epoch != self._epoch:
                    return True
                return not self._pending if alone else self.window.room > 0

            await self._until(ready)
            if epoch is not None and epoch != self._epoch:
                raise Flushed("controller was reset")
            start = self._epoch
            fut: asyncio.Future[Answer] = self._loop.create_future()
            self.window.open(n)
            entry = _Pending(n, line, fut, reset_after, lineno)
            self._pending.append(entry)
            offset = 0
            while True:
                # Whatever fits now goes now: GRBL buffers bytes, a line may arrive in pieces.
                k = min(n - offset, self.window.room)
                self.window.sent(k)
                self._write(data[offset : offset + k])
                offset += k
                if offset == n:
                    entry.sent_at = self._loop.time()
                    break
                await self._until(
                    lambda: self.window.room > 0 or self._epoch != start or self._resetting
                )
                if self._epoch != start or self._resetting:
                    # GRBL was reset: it dropped the head; the tail must never follow.
                    raise Flushed("controller was reset")
            if alone:
                # Nothing else may follow on the wire until this one is answered.
                with contextlib.suppress(CellError):
                    await self._until(fut.done)
        return fut

    async def _result(self, fut: asyncio.Future[Answer]) -> Answer:
        if not fut.done():
            await self._until(fut.done)
        return fut.result()

    async def _command(self, line: str, within: float | None = None) -> Answer:
        """Send one line and wait for its answer (any error:N is returned, not raised)."""
        fut = await self._send(line)
        async with asyncio.timeout(within or self.options.command_timeout_s):
            return await self._result(fut)

    async def _soft_reset(self) -> None:
        """0x18 and wait for the banner: GRBL forgets everything in flight."""
        banners = self._banners
        self._resetting = True
        self._flush_epoch(Flushed("soft reset"))
        self._write_reset()
        await self._until(lambda: self._banners > banners, self.options.command_timeout_s)

    async def _wait_status(self, pred: Callable[[StatusReport], bool], within: float) -> None:
        """Wait for a status report, asked for after this call, that satisfies `pred`."""
        start = self._reports

        def ok() -> bool:
            r = self.status_report
            return self._reports > start and r is not None and pred(r)

        await self._until(ok, within)

    # --- jobs ---------------------------------------------------------------------

    def _load(self, step: Step) -> list[tuple[int, str]]:
        """The program's lines worth sending as (file line number, cleaned line).

        Raises StepFailed for a program GRBL would refuse, naming the line, before
        anything is sent."""
        prog = step.program
        if prog.kind != ProgramKind.GCODE or prog.path is None:
            raise StepFailed(f"step {step.key}: GRBL runs G-code files, got {prog.kind.value}")
        try:
            # Latin-1 maps every byte to one character, so comments in any encoding
            # read; what is left once they are gone must be ASCII (below).
            text = Path(prog.path).read_bytes().decode("latin-1")
        except OSError as exc:
            raise StepFailed(f"{prog.path}: cannot read: {exc.strerror}") from None
        out: list[tuple[int, str]] = []
        if text.endswith("\n"):
            text = text[:-1]
        # Split on line feeds only: str.splitlines() would also split at 0x85 (NEL),
        # 0x1C-0x1E and others, which GRBL does not end a line at.
        for lineno, raw in enumerate(text.split("\n") if text else (), start=1):
            if lineno <= step.start_line:
                continue
            raw = raw.removesuffix("\r")
            if "\r" in raw:
                raise StepFailed(
                    f"{prog.path}:{lineno}: a carriage return inside the line (GRBL would "
                    f"end the line there): {raw.strip()[:60]!r}"
                )
            line = clean_line(raw)
            if not line:
                continue
            if not line.isascii():
                # GRBL's serial interrupt takes bytes above 0x7F as realtime commands
                # (0x84 safety door, 0x85 jog cancel, 0x90-0xA1 overrides): never send one.
                bad = next(c for c in line if not c.isascii())
                raise StepFailed(
                    f"{prog.path}:{lineno}: not ASCII G-code outside a comment "
                    f"(byte 0x{ord(bad):02X}): {raw.strip()[:60]!r}"
                )
            if len(line) > MAX_LINE_CHARS:
                raise StepFailed(
                    f"{prog.path}:{lineno}: line has {len(line)} characters without spaces "
                    f"and comments; GRBL takes at most {MAX_LINE_CHARS} (error:11): "
                    f"{raw.strip()[:60]!r}"
                )
            if any(b in line for b in "?!~"):
                raise StepFailed(
                    f"{prog.path}:{lineno}: contains a GRBL realtime character (? ! ~): "
                    f"{raw.strip()[:60]!r}"
                )
            out.append((lineno, line))
        return out

    def _ensure_ready(self) -> None:
        if self._aborted is not None:
            raise StepFailed(f"device is aborted ({self._aborted}); reset it first")
        if self.status_report is not None and self.status_report.state == "Alarm":
            raise StepFailed(f"machine is in alarm ({self._alarm_reason()}); reset it first")
        if self._running is not None:
            raise StepFailed(f"device is busy with step {self._running.key}")

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        self._last_acked_line = None
        try:
            self._ensure_ready()
            program = await asyncio.to_thread(self._load, step)
            checked, self._checked = self._checked, None
            if self.options.preflight and checked != step:
                await self.preflight(step)
                self._checked = None  # used here
        except StepFailed as exc:
            return StepResult(StepOutcome.FAILED, str(exc))
        except LinkError as exc:
            return StepResult(StepOutcome.INTERRUPTED, str(exc))
        self._running = step
        self._stopping = False
        self._update_state()
        try:
            return await self._stream(step, program, progress)
        except LinkError as exc:
            return StepResult(StepOutcome.INTERRUPTED, str(exc), self._last_acked_line)
        except asyncio.CancelledError:
            # Cancelled from outside: stop the machine safely before giving up the step.
            with contextlib.suppress(CellError, TimeoutError):
                await asyncio.shield(self._controlled_stop())
            raise
        finally:
            self._running = None
            self._tool_wait = None
            self._update_state()

    async def _stream(
        self, step: Step, program: list[tuple[int, str]], progress: ProgressSink
    ) -> StepResult:
        epoch = self._epoch
        total = len(program)
        total_bytes = sum(len(line) + 1 for _, line in program)
        sent: deque[_Sent] = deque()
        done_lines = done_bytes = 0
        last_report = 0.0
        last_tool: int | None = None
        tool_changes = 0

        def report(force: bool = False) -> None:
            nonlocal last_report
            now = time.monotonic()
            if force or now - last_report >= 0.25:
                last_report = now
                progress(
                    Progress(
                        fraction=done_bytes / total_bytes if total_bytes else 1.0,
                        bytes_done=done_bytes,
                        bytes_total=total_bytes,
                        lines_done=done_lines,
                        last_acked_line=self._last_acked_line,
                    )
                )

        def harvest(all_: bool = False) -> StepResult | None:
            nonlocal done_lines, done_bytes
            while sent and (all_ or sent[0].future.done()):
                s = sent[0]
                if not s.future.done():
                    return None
                sent.popleft()
                try:
                    answer = s.future.result()
                except Flushed as exc:
                    return self._interrupted(str(exc), s.lineno)
                if not answer.ok:
                    code = answer.reply.code or 0
                    return StepResult(
                        StepOutcome.FAILED,
                        f"line {s.lineno} {s.line!r}: {codes.describe_error(code)}",
                        self._last_acked_line,
                    )
                done_lines += 1
                done_bytes += len(s.line) + 1
            return None

        async def drain() -> StepResult | None:
            while sent:
                if not sent[0].future.done():
                    with contextlib.suppress(CellError):
                        await self._until(sent[0].future.done)
                bad = harvest()
                if bad is not None:
                    return bad
            return None

        async def fail(result: StepResult) -> StepResult:
            if result.outcome == StepOutcome.FAILED and self._epoch == epoch:
                # Lines behind the bad one are still in GRBL's buffer: hold, then flush.
                with contextlib.suppress(CellError, TimeoutError):
                    await self._controlled_stop()
            return result

        report(force=True)
        try:
            for lineno, line in program:
                bad = harvest()
                if bad is not None:
                    return await fail(bad)
                tc = tool_change(line)
                if tc is not None:
                    if tc.rest:
                        fut = await self._send(tc.rest, epoch=epoch, lineno=lineno)
                        sent.append(_Sent(lineno, tc.rest, fut))
                    bad = await drain()
                    if bad is None:
                        bad = await self._sync(epoch, lineno)
                    if bad is not None:
                        return await fail(bad)
                    tool = tc.tool if tc.tool is not None else last_tool
                    bad = await self._change_tool(step, tool, lineno, epoch)
                    if bad is not None:
                        return await fail(bad)
                    self._last_acked_line = lineno
                    # The host did the M6: its line is done, with the bytes GRBL never got.
                    tool_changes += 1
                    done_bytes += len(line) + 1 - (len(tc.rest) + 1 if tc.rest else 0)
                    done_lines += 0 if tc.rest else 1
                    report(force=True)
                    continue
                t = tool_select(line)
                if t is not None:
                    last_tool = t
                if line.startswith("$"):
                    # `$` commands (settings, `$I=`…) need GRBL idle: let the motion end.
                    bad = await drain()
                    if bad is None:
                        bad = await self._sync(epoch, lineno)
                    if bad is not None:
                        return await fail(bad)
                fut = await self._send(line, epoch=epoch, lineno=lineno)
                sent.append(_Sent(lineno, line, fut))
                report()
            bad = await drain()
            if bad is None:
                bad = await self._sync(epoch, program[-1][0] if program else 0)
            if bad is not None:
                return await fail(bad)
        except Flushed as exc:
            return self._interrupted(str(exc), None)
        report(force=True)
        changes = f", {tool_changes} tool change(s) by the host (M6)" if tool_changes else ""
        return StepResult(StepOutcome.DONE, f"{total} lines{changes}", self._last_acked_line)

    def _interrupted(self, why: str, lineno: int | None) -> StepResult:
        if self._stopping:
            return StepResult(
                StepOutcome.CANCELLED, "stopped by an operator stop", self._last_acked_line
            )
        if self._last_alarm is not None and self._aborted is not None:
            where = f" at line {lineno}" if lineno is not None else ""
            return StepResult(StepOutcome.FAILED, f"{self._aborted}{where}", self._last_acked_line)
        return StepResult(StepOutcome.FAILED, why, self._last_acked_line)

    async def _sync(self, epoch: int, lineno: int) -> StepResult | None:
        """Wait until every planned move has finished (`G4 P0` is answered only then)."""
        try:
            answer = await self._result(await self._send(SYNC_LINE, epoch=epoch))
        except Flushed as exc:
            return self._interrupted(str(exc), lineno)
        if not answer.ok:
            return self._refused(f"after line {lineno}: {SYNC_LINE}", answer)
        return None

    def _refused(self, where: str, answer: Answer) -> StepResult:
        """The step fails where GRBL answered `error:N` to a line the driver sent itself."""
        reason = codes.describe_error(answer.reply.code or 0)
        return StepResult(StepOutcome.FAILED, f"{where}: {reason}", self._last_acked_line)

    async def _macro(self, lines: Sequence[str], epoch: int, what: str) -> StepResult | None:
        for raw in lines:
            line = clean_line(raw)
            if not line:
                continue
            try:
                answer = await self._result(await self._send(line, epoch=epoch))
            except Flushed as exc:
                return self._interrupted(str(exc), None)
            if not answer.ok:
                return self._refused(f"{what} line {line!r}", answer)
        return await self._sync(epoch, self._last_acked_line or 0)

    async def _change_tool(
        self, step: Step, tool: int | None, lineno: int, epoch: int
    ) -> StepResult | None:
        self._tool_wanted = tool
        self._tool_wait = self._loop.create_future()
        self._update_state()
        label = f"T{tool}" if tool is not None else "the next tool"
        try:
            if self.options.tool_change_macro:
                self.log.info("automatic tool change", tool=tool, line=lineno)
                lines = [
                    m.replace("{tool}", str(tool or 0)) for m in self.options.tool_change_macro
                ]
                bad = await self._macro(lines, epoch, "tool change")
                if bad is not None:
                    return bad
            else:
                self.ctx.emit(
                    OperatorRequest(
                        self.ctx.device_id,
                        RequestKind.CHANGE_TOOL,
                        f"Change tool: insert {label} (program line {lineno}), then acknowledge",
                        step.key,
                        {"tool": tool, "line": lineno},
                    )
                )
                try:
                    await self._until(self._tool_wait.done)
                    self._tool_wait.result()
                except Flushed as exc:
                    return self._interrupted(str(exc), lineno)
            if self.options.tool_probe_macro:
                bad = await self._macro(self.options.tool_probe_macro, epoch, "tool probe")
                if bad is not None:
                    return bad
        finally:
            self._tool_wait = None
            self._update_state()
        self._tool = tool
        self.log.info("tool changed", tool=tool, line=lineno)
        return None

    async def preflight(self, step: Step) -> None:
        """Run the program through GRBL's `$C` check mode; raise StepFailed naming the
        first line GRBL refuses. `M6` lines are the host's and are not checked."""
        self._checked = None
        program = await asyncio.to_thread(self._load, step)
        if self._running is not None:
            raise StepFailed(f"device is busy with step {self._running.key}")
        answer = await self._command("$C")
        if not answer.ok:
            raise StepFailed(
                f"cannot enter check mode: {codes.describe_error(answer.reply.code or 0)}"
            )
        first_bad: tuple[int, str, int] | None = None
        epoch = self._epoch
        try:
            sent: deque[_Sent] = deque()
            for lineno, line in program:
                if line.startswith("$"):
                    continue  # system commands are not G-code; `$C` refuses most of them
                tc = tool_change(line)
                if tc is not None:
                    if not tc.rest:
                        continue
                    line = tc.rest
                sent.append(_Sent(lineno, line, await self._send(line, epoch=epoch)))
                while sent and sent[0].future.done():
                    s = sent.popleft()
                    a = s.future.result()
                    if not a.ok and first_bad is None:
                        first_bad = (s.lineno, s.line, a.reply.code or 0)
            for s in sent:
                a = await self._result(s.future)
                if not a.ok and first_bad is None:
                    first_bad = (s.lineno, s.line, a.reply.code or 0)
        except Flushed as exc:
            raise StepFailed(f"pre-flight interrupted: {exc}") from None
        finally:
            if self._epoch == epoch and not self._resetting:
                banners = self._banners
                # Leaving check mode makes GRBL soft-reset (banner) right after its `ok`.
                with contextlib.suppress(CellError, TimeoutError):
                    await self._result(await self._send("$C", reset_after=True))
                    await self._until(
                        lambda: self._banners > banners, self.options.command_timeout_s
                    )
        if first_bad is not None:
            lineno, line, code = first_bad
            raise StepFailed(
                f"pre-flight ($C) refused line {lineno} {line!r}: {codes.describe_error(code)}"
            )
        self._checked = step

    # --- operator and safety commands -----------------------------------------------

    async def pause(self) -> None:
        self._write(RT_HOLD, urgent=True)

    async def resume(self) -> None:
        """Resume after a hold; at a tool change this is the operator's acknowledgement."""
        if self._tool_wait is not None and not self._tool_wait.done():
            self._tool_wait.set_result(None)
            self._notify()
            held = self.status_report is not None and self.status_report.state in ("Hold", "Door")
            if not held:
                return
        self._write(RT_RESUME, urgent=True)

    async def _controlled_stop(self) -> None:
        """Feed hold, wait until motion has stopped, then soft-reset to drop the rest.

        A reset during a completed hold keeps the position (no ALARM:3)."""
        state = self.status_report.state if self.status_report else "Idle"
        if state not in ("Alarm",):
            self._write(RT_HOLD, urgent=True)

            def stopped(r: StatusReport) -> bool:
                if r.state in ("Hold", "Door"):
                    return r.substate in (0, 1) if r.state == "Door" else r.substate == 0
                return r.state in ("Idle", "Alarm")

            try:
                await self._wait_status(stopped, self.options.command_timeout_s)
            except TimeoutError:
                # Still moving after the bound: stop anyway (GRBL may then report ALARM:3).
                self.log.warning("feed hold did not complete; soft reset anyway")
        await self._soft_reset()

    async def stop(self) -> None:
        if self._running is None:
            return
        self._stopping = True
        if self._tool_wait is not None and not self._tool_wait.done():
            self._tool_wait.set_exception(Flushed("stopped during a tool change"))
            self._tool_wait.exception()
        await self._controlled_stop()

    async def emergency_stop(self) -> None:
        """0x18 at once: motion stops, and GRBL comes back in ALARM:3 if it was moving."""
        self._aborted = "emergency stop (soft reset): position may be lost; reset() to recover"
        self._resetting = True
        self._flush_epoch(Flushed("emergency stop"))
        self._write_reset()
        self._update_state()

    async def reset(self) -> None:
        """Leave Aborted/Stopped: flush with a soft reset, then home or unlock."""
        if self._running is not None:
            raise StepFailed("a step is running; stop it first")
        timeout = self.options.command_timeout_s
        if self._resetting:
            banners = self._banners
            with contextlib.suppress(TimeoutError):
                await self._until(lambda: self._banners > banners or not self._resetting, 2.0)
        if self._aborted is not None or self._last_alarm is not None:
            await self._soft_reset()
        await self._wait_status(lambda r: True, timeout)
        assert self.status_report is not None
        if self.status_report.state == "Alarm":
            homing = self.settings.get(22, "0") == "1"
            lost = self._last_alarm is None or self._last_alarm in codes.POSITION_LOST
            cmd = "$H" if homing and lost and self.options.home_on_reset else "$X"
            answer = await self._command(cmd, timeout)
            if not answer.ok:
                raise DeviceFault(f"{cmd} refused: {codes.describe_error(answer.reply.code or 0)}")
        if self._last_alarm is not None:
            self.ctx.emit(Alarm(self.ctx.device_id, f"ALARM:{self._last_alarm}", "", active=False))
        self._aborted = None
        self._startup_alarm = None
        self._last_alarm = None
        await self._wait_status(lambda r: r.state != "Alarm", timeout)
        self._update_state()

    async def maintenance(self, lines: Sequence[str]) -> list[str]:
        """Privileged lines outside a job (cellctl/maintenance.py), sent one by one and
        answered; the first `error:` stops the rest. `$` settings are read back after."""
        from cellctl.maintenance import MaintenanceRefused

        for i, line in enumerate(lines, 1):
            why = _not_maintenance(line)
            if why:
                raise MaintenanceRefused(f"line {i} `{line[:40]}`: {why}")
        if self._running is not None or self._aborted is not None:
            raise MaintenanceRefused("the controller is not idle")
        answers: list[str] = []
        try:
            for i, line in enumerate(lines, 1):
                answer = await self._command(line)
                said = "; ".join(r.text for r in answer.feedback)[:200]
                if not answer.ok:
                    ran = f"lines 1-{i - 1} ran" if i > 1 else "no line before it"
                    raise MaintenanceRefused(
                        f"line {i} `{line}`: {codes.describe_error(answer.reply.code or 0)}; "
                        f"{ran}, the rest was not sent"
                    )
                answers.append(f"ok: {said}" if said else "ok")
        finally:
            if any(ln.lstrip().startswith("$") for ln in lines[: len(answers) + 1]):
                with contextlib.suppress(CellError, TimeoutError):
                    settings = await self._command("$$")
                    for r in settings.feedback:
                        kv = parse_setting(r.text)
                        if kv:
                            self.settings[kv[0]] = kv[1]
        return answers

    async def change_setup(self, to: Setup) -> None:
        tool = to.get("tool")
        if tool is None or set(to) - {"tool"} or not self.options.tool_change_macro:
            raise NotSupported(
                "an operator changes this machine's setup (no tool_change_macro for it)"
            )
        number = int(tool.lstrip("Tt"))
        bad = await self._macro(
            [m.replace("{tool}", str(number)) for m in self.options.tool_change_macro],
            self._epoch,
            "tool change",
        )
        if bad is not None:
            raise DeviceFault(bad.message)
        self._tool = number
        self._update_state()

    def __repr__(self) -> str:
        return f"GrblDriver({self.ctx.device_id!r}, {self.path!r})"


def _not_maintenance(line: str) -> str:
    """Why a maintenance line cannot go to GRBL ("" if it can)."""
    if len(line) > MAX_LINE_CHARS:
        return f"over GRBL's {MAX_LINE_CHARS} characters"
    if any(c in line for c in "?!~"):
        return "holds a realtime character (? ! ~) GRBL would act on at once"
    word = line.strip().upper()
    if word == "$C":
        return "check mode: later jobs would only be checked, not run"
    if word == "$SLP":
        return "sleep: only a reset wakes the controller; use `cellctl reset` instead"
    return ""
