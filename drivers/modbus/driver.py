"""PLCs over Modbus TCP (or RTU): a register map from config, polled, plus a recipe handshake.

The PLC is described in config, never in code: its tags (table, address,
type, word/byte order, scale), polling groups, the tags that show its state,
the writes that pause, stop or e-stop it, the recipe handshake a job step
runs, and the heartbeat register it watches.

PackML mapping (from the tags under `status` and the handshake):

| PLC / link                                   | PackML state |
|----------------------------------------------|--------------|
| not connected                                | UNAVAILABLE  |
| `status.estop` true, or e-stop sent by us    | ABORTED      |
| `status.fault` true / non-zero               | ABORTED      |
| a handshake step running, `status.held` true | HELD         |
| a handshake step running                     | EXECUTE      |
| no step, `status.running` true               | EXECUTE      |
| otherwise                                    | IDLE         |

A recipe step: write the parameters (and the step's token), set `request`,
wait for `ack`, clear `request`, wait for `done` or a non-zero `error`, each
with its timeout. The handshake's state is read before anything is written,
and again after any reconnect, so one step never issues two requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from cellctl.driver import DriverContext, ProgressSink, StateTracker, TaskGroup
from cellctl.errors import (
    CellError,
    DeviceFault,
    NotSupported,
    StepFailed,
    WrongDevice,
)
from cellctl.model import (
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricValue,
    ProgramKind,
    Progress,
    Quality,
    Sample,
    Samples,
    Setup,
    Step,
    StepOutcome,
    StepResult,
)

from .codec import INT_RANGES, DataType
from .link import ExceptionResponse, Link, Reader, Unconfirmed
from .options import ModbusOptions, Tag, Write
from .overlap import Overlap
from .plan import Read, plan
from .tags import Decoder, compile_read, metric_spec, span, words_for


@dataclass(frozen=True, slots=True)
class Handshake:
    """One read of the handshake's tags (missing optional tags read as false/0)."""

    request: bool
    ack: bool
    done: bool
    error: int
    busy: bool
    token: int | None
    progress: float | None


@dataclass(eq=False, slots=True)
class _Job:
    """One planned read, made ready once: its request and its decoders."""

    read: Read
    reader: Reader
    parts: list[tuple[str, int, Decoder]]


def step_token(key: str, modulo: int) -> int:
    """A non-zero number from the step key, written with the request and echoed in state."""
    return zlib.crc32(key.encode()) % (modulo - 1) + 1


class ModbusDriver:
    """PLC over Modbus TCP/RTU: register map, polling groups, recipe handshake, heartbeat."""

    name: ClassVar[str] = "modbus"
    Options: ClassVar[type[ModbusOptions]] = ModbusOptions
    simulator: ClassVar[str] = "modbus-plc"

    def __init__(self, ctx: DriverContext, options: ModbusOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.log = ctx.logger()
        self.link = Link(options, ctx.endpoint)
        self._tracker = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self.values: dict[str, MetricValue] = {}
        o = options
        self.group_reads: dict[str, list[Read]] = {}
        for group in sorted({t.group for t in o.tags.values() if t.group}):
            members = [span(n, t) for n, t in o.tags.items() if t.group == group]
            self.group_reads[group] = self._plan(members)
        self._status_reads = self._plan_names(
            n for n in o.status.model_dump().values() if n is not None
        )
        hs_names: list[str] = []
        if o.recipe is not None:
            r = o.recipe
            hs_names = [r.request, r.ack, r.done, r.error]
            hs_names += [n for n in (r.busy, r.token, r.progress) if n is not None]
        self._hs_reads = self._plan_names(
            [*hs_names, *(n for n in o.status.model_dump().values() if n)]
        )
        # What a never-read tag shows when published with bad quality.
        blanks: dict[DataType, MetricValue] = {DataType.BOOL: False, DataType.STRING: ""}
        self._blank = {n: blanks.get(t.dtype, 0) for n, t in o.tags.items()}
        self._jobs: dict[Read, _Job] = {}
        self._group_jobs = {g: self._jobs_for(reads) for g, reads in self.group_reads.items()}
        self._status_jobs = self._jobs_for(self._status_reads)
        self._hs_jobs = self._jobs_for(self._hs_reads)
        self._step_key: str | None = None
        self._estop_sent = False
        self._held_sent = False
        self._stop_requested = asyncio.Event()
        self._closed = False
        self._failing: set[_Job] = set()  # reads whose exception was logged (log once)
        self.issued: list[str] = []  # step keys whose request this driver set (tests, logs)

    # --- planning ------------------------------------------------------------

    def _plan(self, spans: Sequence[Any]) -> list[Read]:
        o = self.options
        return plan(spans, o.max_gap, o.max_count, o.max_bits_gap, o.max_bits_count)

    def _plan_names(self, names: Iterable[str]) -> list[Read]:
        unique = dict.fromkeys(names)
        return self._plan([span(n, self.options.tags[n]) for n in unique])

    def _job(self, read: Read) -> _Job:
        job = self._jobs.get(read)
        if job is None:

            def what() -> str:
                return "reading " + read.describe()

            reader = self.link.reader(read.table, read.address, read.count, what)
            job = _Job(read, reader, compile_read(self.options, read))
            self._jobs[read] = job
        return job

    def _jobs_for(self, reads: Iterable[Read]) -> list[_Job]:
        return [self._job(r) for r in reads]

    # --- contract: lifecycle --------------------------------------------------

    def metrics(self) -> Sequence[MetricSpec]:
        return [metric_spec(n, t) for n, t in self.options.tags.items()]

    async def __aenter__(self) -> Self:
        self._closed = False
        await self.link.connect()
        self.log.info("modbus connected", link=self.link.where)
        await self._check_identity()
        try:
            await self._read_all(self._status_jobs)
        except ExceptionResponse as exc:
            self.log.error("cannot read the PLC's status tags", error=str(exc))
            raise
        self._update_state()
        return self

    async def _check_identity(self) -> None:
        expected = self.options.identity
        if not expected:
            return
        try:
            got = await self._read_all(self._jobs_for(self._plan_names(expected)))
        except ExceptionResponse as exc:
            raise WrongDevice(f"{self.link.where}: identity tags unreadable: {exc}") from exc
        wrong = [
            f"{name} = {got.get(name)!r} (expected {want!r})"
            for name, want in expected.items()
            if got.get(name) != want
        ]
        if wrong:
            raise WrongDevice(f"another PLC answers at {self.link.where}: " + ", ".join(wrong))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self.link.close()
        self._tracker.set(DeviceState.UNAVAILABLE, "disconnected")

    async def serve(self) -> None:
        try:
            async with TaskGroup() as tg:
                for group, jobs in self._group_jobs.items():
                    tg.create_task(self._poll_loop(group, jobs), name=f"poll:{group}")
                if self.options.heartbeat is not None:
                    tg.create_task(self._heartbeat_loop(), name="heartbeat")
                if not self.group_reads and self.options.heartbeat is None:
                    tg.create_task(self._poll_loop("status", self._status_jobs), name="status")
        except* CellError as eg:
            # One reason is enough for the supervisor (a lost link, a refused heartbeat).
            raise eg.exceptions[0] from None

    def status(self) -> DeviceStatus:
        return DeviceStatus(self._tracker.state, detail=self._tracker.reason)

    # --- reading ------------------------------------------------------------------

    def _decode(self, job: _Job, words: list[int]) -> dict[str, MetricValue]:
        try:
            return {name: fn(words, at) for name, at, fn in job.parts}
        except (ValueError, IndexError, TypeError, struct.error) as exc:  # garbage: log, survive
            self.log.warning("undecodable answer", read=job.read.describe(), error=str(exc))
            return {}

    async def _read_all(self, jobs: Sequence[_Job]) -> dict[str, MetricValue]:
        # Decoding is a plain call, not a coroutine: see Link.call on frames per request.
        if len(jobs) == 1:
            job = jobs[0]
            out = self._decode(job, job.reader.words(await job.reader.send()))
        else:
            later = Overlap(self._decode)
            for job in jobs:
                later.add(job, job.reader.words(await job.reader.send()))
            out = later.drain()
        self.values.update(out)
        return out

    def read_group(self, group: str) -> Coroutine[Any, Any, dict[str, MetricValue]]:
        """Read one polling group now (the requests its plan lists, no more)."""
        return self._read_all(self._group_jobs[group])

    async def read_tag(self, name: str) -> MetricValue:
        tag = self._tag(name)
        values = await self._read_all(self._jobs_for(self._plan([span(name, tag)])))
        return values[name]

    async def write_tag(
        self, name: str, value: MetricValue, resend: bool = True, urgent: bool = False
    ) -> None:
        """Write one tag. Raises StepFailed for a bad value, DeviceFault for a refusal.

        An `urgent` write goes before every request waiting for the link."""
        tag = self._tag(name)
        if not tag.writable:
            raise StepFailed(f"tag {name!r} ({tag.where()}) is not writable = true in config")
        words = words_for(self.options, name, value)
        what = f"writing tag {name!r} ({tag.where()})"
        await self.link.write(tag.table, tag.address, words, what, resend, urgent)
        self.values[name] = value

    def _tag(self, name: str) -> Tag:
        try:
            return self.options.tags[name]
        except KeyError:
            raise StepFailed(f"no tag named {name!r} in this PLC's map") from None

    async def _poll_loop(self, group: str, jobs: list[_Job]) -> None:
        interval = self.options.interval_of(group)
        while True:
            started = time.monotonic()
            samples: list[Sample] = []
            now = time.time()
            later = Overlap(self._decode)
            for job in jobs:
                try:
                    words = job.reader.words(await job.reader.send())
                except ExceptionResponse as exc:
                    if job not in self._failing:
                        self._failing.add(job)
                        self.log.error("PLC refused a read", error=str(exc))
                    samples += [
                        Sample(
                            s.name, self.values.get(s.name, self._blank[s.name]), now, Quality.BAD
                        )
                        for s in job.read.spans
                    ]
                    continue
                if job in self._failing:
                    self._failing.discard(job)
                    self.log.info("PLC answers the read again", read=job.read.describe())
                later.add(job, words)
            values = later.drain()
            self.values.update(values)
            samples += [Sample(n, v, now) for n, v in values.items()]
            self._update_state()
            if samples:
                self.ctx.emit(Samples(self.ctx.device_id, tuple(samples)))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _heartbeat_loop(self) -> None:
        hb = self.options.heartbeat
        assert hb is not None
        tag = self.options.tags[hb.tag]
        counter = 0
        while True:
            if tag.dtype == DataType.BOOL:
                value: MetricValue = counter % 2 == 1
            else:
                lo, hi = INT_RANGES.get(tag.dtype, (0, 65535))
                value = counter % (hi + 1) if lo == 0 else counter % hi
            await self.write_tag(hb.tag, value)
            counter += 1
            await asyncio.sleep(hb.interval_s)

    # --- state -----------------------------------------------------------------------

    def _flag(self, name: str | None) -> bool:
        return bool(self.values.get(name, False)) if name else False

    def _update_state(self) -> None:
        s = self.options.status
        if self._closed:
            return
        if self._estop_sent or self._flag(s.estop):
            self._tracker.set(DeviceState.ABORTED, "emergency stop")
        elif self._flag(s.fault):
            self._tracker.set(DeviceState.ABORTED, f"PLC fault {self.values.get(s.fault or '')}")
        elif self._step_key is not None:
            held = self._flag(s.held) if s.held else self._held_sent
            if held:
                self._tracker.set(DeviceState.HELD, "paused")
            else:
                self._tracker.set(DeviceState.EXECUTE, f"step {self._step_key}")
        elif self._flag(s.running):
            self._tracker.set(DeviceState.EXECUTE, "PLC cycle running")
        else:
            self._tracker.set(DeviceState.IDLE)

    async def _refresh(self) -> None:
        await self._read_all(self._status_jobs)
        self._update_state()

    # --- commands ----------------------------------------------------------------

    async def _command(self, name: str, writes: tuple[Write, ...], urgent: bool = False) -> None:
        if not writes:
            raise NotSupported(f"no writes configured for commands.{name}")
        for w in writes:
            await self.write_tag(w.tag, w.value, urgent=urgent)
        pulses = [w for w in writes if w.pulse_s is not None]
        if pulses:
            await asyncio.sleep(max(w.pulse_s or 0.0 for w in pulses))
            for w in pulses:
                back: MetricValue = not w.value if isinstance(w.value, bool) else 0
                await self.write_tag(w.tag, back, urgent=urgent)

    async def pause(self) -> None:
        await self._command("pause", self.options.commands.pause)
        self._held_sent = True
        await self._refresh()

    async def resume(self) -> None:
        await self._command("resume", self.options.commands.resume)
        self._held_sent = False
        await self._refresh()

    async def stop(self) -> None:
        self._stop_requested.set()
        await self._command("stop", self.options.commands.stop)
        await self._refresh()

    async def emergency_stop(self) -> None:
        # The state changes first: whatever the link does, cellctl treats the PLC as stopped.
        self._estop_sent = True
        self._stop_requested.set()
        self._update_state()
        # Urgent: it waits for the request on the wire, not for the polls queued behind it.
        await self._command("emergency_stop", self.options.commands.emergency_stop, urgent=True)

    async def reset(self) -> None:
        await self._command("reset", self.options.commands.reset)
        self._estop_sent = False
        self._held_sent = False
        await self._refresh()

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("a PLC changeover is done by an operator")

    # --- the recipe handshake ---------------------------------------------------

    async def _read_handshake(self) -> Handshake:
        r = self.options.recipe
        assert r is not None
        v = await self._read_all(self._hs_jobs)
        self._update_state()
        progress: float | None = None
        if r.progress is not None:
            raw = v.get(r.progress)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                progress = min(1.0, max(0.0, raw / 100 if r.progress_percent else float(raw)))
        token = v.get(r.token) if r.token else None
        return Handshake(
            request=bool(v.get(r.request)),
            ack=bool(v.get(r.ack)),
            done=bool(v.get(r.done)),
            error=int(v.get(r.error) or 0),
            busy=bool(v.get(r.busy)) if r.busy else False,
            token=int(token) if isinstance(token, int | float) else None,
            progress=progress,
        )

    def _token_for(self, step: Step) -> int | None:
        r = self.options.recipe
        if r is None or r.token is None:
            return None
        lo, hi = INT_RANGES.get(self.options.tags[r.token].dtype, (0, 65535))
        return step_token(step.key, min(hi, 2**31 - 1) if lo == 0 else hi)

    def _parameter_writes(self, step: Step) -> list[tuple[str, MetricValue]]:
        """Validated before anything is written: a bad step writes nothing."""
        r = self.options.recipe
        assert r is not None
        writes: list[tuple[str, MetricValue]] = []
        for param, value in step.program.parameters.items():
            if param not in r.parameters:
                known = ", ".join(sorted(r.parameters)) or "none"
                raise StepFailed(
                    f"step parameter {param!r} is not in recipe.parameters (known: {known})"
                )
            words_for(self.options, r.parameters[param], value)  # raises on a bad value
            writes.append((r.parameters[param], value))
        if r.recipe_number is not None and step.program.name:
            try:
                number = int(step.program.name)
            except ValueError:
                raise StepFailed(
                    f"recipe {step.program.name!r}: recipe.recipe_number takes a number"
                ) from None
            words_for(self.options, r.recipe_number, number)
            writes.append((r.recipe_number, number))
        return writes

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        r = self.options.recipe
        if r is None:
            raise NotSupported("this PLC has no [recipe] handshake in its config")
        if step.program.kind not in (ProgramKind.PLC_RECIPE, ProgramKind.NONE):
            raise StepFailed(f"a PLC runs recipe steps, not {step.program.kind} programs")
        writes = self._parameter_writes(step)
        token = self._token_for(step)
        self._stop_requested.clear()
        self._step_key = step.key
        self._update_state()
        progress(Progress(fraction=0.0))
        try:
            result = await self._handshake(step, writes, token, progress)
            self.log.info(
                "step ended", step=step.key, outcome=result.outcome.value, why=result.message
            )
            return result
        except asyncio.CancelledError:
            # Stop safely: never leave a request standing that the PLC could still accept.
            with contextlib.suppress(CellError, TimeoutError):
                async with asyncio.timeout(self.options.timeout_s * 2):
                    await asyncio.shield(self.write_tag(r.request, False))
            raise
        finally:
            self._step_key = None
            if not self._closed:
                self._update_state()

    async def _handshake(
        self,
        step: Step,
        writes: list[tuple[str, MetricValue]],
        token: int | None,
        progress: ProgressSink,
    ) -> StepResult:
        r = self.options.recipe
        assert r is not None
        hs = await self._read_handshake()
        ours = token is not None and hs.token == token
        if hs.request or hs.ack or hs.busy:
            # A cycle is in flight. Ours (same token, or this driver set the request):
            # attach to it. Anyone else's: refuse rather than start a second one.
            if not (ours or step.key in self.issued):
                why = "token tag not configured" if token is None else f"token {hs.token}"
                raise StepFailed(f"the PLC is busy with another cycle ({why}); request not sent")
            self.log.info("attaching to a handshake in flight", step=step.key)
        elif ours and (hs.done or hs.error):
            self.log.info("the step's cycle already ended on the PLC", step=step.key)
            return self._result(hs)
        else:
            refusal = self._refusal()
            if refusal:
                return StepResult(StepOutcome.FAILED, f"{refusal}; request not sent")
            if (res := self._interrupt()) is not None:
                return StepResult(StepOutcome.CANCELLED, f"{res} before the request was sent")
            for tag, value in writes:
                await self.write_tag(tag, value)
            if token is not None and r.token is not None:
                await self.write_tag(r.token, token)
            self.issued.append(step.key)
            hs = await self._issue(r.request, token)
            self.log.info("recipe requested", step=step.key, token=token)

        # Wait for the acknowledge (or for evidence the PLC took the request already).
        deadline = time.monotonic() + r.ack_timeout_s
        while hs.request and not hs.ack:
            if (res := self._interrupt()) is not None:
                await self.write_tag(r.request, False)
                return await self._end_cancelled(res)
            if time.monotonic() > deadline:
                await self.write_tag(r.request, False)
                return StepResult(
                    StepOutcome.FAILED,
                    f"no acknowledge from the PLC within {r.ack_timeout_s:g} s; request cleared",
                )
            await asyncio.sleep(r.poll_s)
            hs = await self._read_handshake()

        if hs.request:
            await self.write_tag(r.request, False)
            hs = await self._read_handshake()
        deadline = time.monotonic() + r.clear_timeout_s
        while hs.ack:
            if time.monotonic() > deadline:
                return StepResult(
                    StepOutcome.FAILED,
                    f"ack still set {r.clear_timeout_s:g} s after the request was cleared",
                )
            await asyncio.sleep(r.poll_s)
            hs = await self._read_handshake()

        # Wait for done or an error code; paused time does not count.
        started = time.monotonic()
        budget = r.done_timeout_s
        last = time.monotonic()
        reported: float | None = 0.0
        while not (hs.done or hs.error):
            if (res := self._interrupt()) is not None:
                return await self._end_cancelled(res)
            if (refusal := self._refusal()) is not None:
                return StepResult(StepOutcome.FAILED, refusal)
            now = time.monotonic()
            if self._tracker.state != DeviceState.HELD:
                budget -= now - last
            last = now
            if budget < 0:
                return StepResult(
                    StepOutcome.FAILED, f"no done from the PLC within {r.done_timeout_s:g} s"
                )
            fraction = hs.progress
            if fraction is None and step.estimated_s:
                fraction = min(0.99, (now - started) / step.estimated_s)
            if fraction is not None and fraction != reported:
                reported = fraction
                remaining = None
                if step.estimated_s:
                    remaining = max(0.0, step.estimated_s * (1 - fraction))
                progress(Progress(fraction=fraction, remaining_s=remaining))
            await asyncio.sleep(r.poll_s)
            hs = await self._read_handshake()
        if (res := self._interrupt()) is not None:
            return await self._end_cancelled(res)
        result = self._result(hs)
        if result.outcome == StepOutcome.DONE:
            progress(Progress(fraction=1.0, remaining_s=0.0))
        return result

    async def _issue(self, request: str, token: int | None) -> Handshake:
        """Set the request: the only write that can start a cycle, so never blindly twice."""
        try:
            await self.write_tag(request, True, resend=False)
        except Unconfirmed:
            hs = await self._read_handshake()
            taken = hs.request or hs.ack or hs.busy or (hs.token == token and hs.done)
            self.log.warning("link dropped while requesting", plc_has_request=taken)
            if taken:
                return hs
            await self.write_tag(request, True, resend=False)  # the PLC never saw it
        return await self._read_handshake()

    def _result(self, hs: Handshake) -> StepResult:
        if hs.error:
            return StepResult(
                StepOutcome.FAILED, f"the PLC ended the cycle with error code {hs.error}"
            )
        return StepResult(StepOutcome.DONE)

    def _refusal(self) -> str | None:
        s = self.options.status
        if self._estop_sent or self._flag(s.estop):
            return "emergency stop active"
        if self._flag(s.fault):
            return f"PLC faulted (fault {self.values.get(s.fault or '')})"
        return None

    def _interrupt(self) -> str | None:
        if self._estop_sent:
            return "emergency stop"
        if self._stop_requested.is_set():
            return "stopped"
        return None

    async def _end_cancelled(self, why: str) -> StepResult:
        """After stop/e-stop: make sure the PLC ends the cycle (bounded), then report.

        A stop sent while the request was still unanswered may have reached the
        PLC before the request did; if the cycle runs anyway, stop it again.
        """
        r = self.options.recipe
        assert r is not None
        deadline = time.monotonic() + r.stop_timeout_s
        # A stop pulse still in progress hides the edge of a new one: resend after it.
        pulse = max((w.pulse_s or 0.0 for w in self.options.commands.stop), default=0.0)
        resend_at = time.monotonic() + pulse + 0.1
        try:
            while time.monotonic() < deadline:
                hs = await self._read_handshake()
                if not (hs.busy or hs.ack):
                    return StepResult(StepOutcome.CANCELLED, why)
                if hs.busy and why == "stopped" and time.monotonic() >= resend_at:
                    await self._command("stop", self.options.commands.stop)
                    resend_at = time.monotonic() + pulse + 0.25
                await asyncio.sleep(r.poll_s)
        except DeviceFault as exc:
            return StepResult(StepOutcome.CANCELLED, f"{why}; PLC state unknown: {exc}")
        return StepResult(
            StepOutcome.CANCELLED,
            f"{why}; the PLC still showed a cycle after {r.stop_timeout_s:g} s",
        )
