"""A small in-test device: a simulator speaking a line protocol over real TCP, and its driver.

Sim → driver: `HELLO <state>`, `STATE <state> [reason]`, `SAMPLE <name> <value>`,
`ALARM <code> <text>`, `REQUEST <kind> <text>`, `OK <command>`.
Driver → sim: `CMD <command>` (pause, resume, stop, reset, estop).

The simulator keeps a class-level index by `tag` so a test can reach the
instance the supervisor started, push events through it and see which
commands reached its stop path (and when).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from cellctl.driver import DriverContext, DriverOptions, SimOptions, StateTracker
from cellctl.errors import LinkError, NotSupported
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

TRANSITIONS = {
    "pause": DeviceState.HELD,
    "resume": DeviceState.EXECUTE,
    "stop": DeviceState.STOPPED,
    "reset": DeviceState.IDLE,
    "estop": DeviceState.ABORTED,
}


class TestSimOptions(SimOptions):
    tag: str = "dev"
    initial: str = "idle"
    burst: int = 0  # alarms sent right after a driver connects


class TestSim:
    name: ClassVar[str] = "testdev"
    Options: ClassVar[type[SimOptions]] = TestSimOptions
    instances: ClassVar[dict[str, TestSim]] = {}

    def __init__(self, options: TestSimOptions) -> None:
        self.options = options
        self.state = DeviceState[options.initial.upper()]
        self.commands: list[tuple[str, float]] = []
        self.stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._port = 0
        self._alarm_n = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]
        TestSim.instances[self.options.tag] = self
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        writer.write(f"HELLO {self.state.label}\n".encode())
        for _ in range(self.options.burst):
            self.alarm("BURST", "burst alarm")
        try:
            while line := await reader.readline():
                parts = line.decode().split()
                if len(parts) == 2 and parts[0] == "CMD" and parts[1] in TRANSITIONS:
                    self.commands.append((parts[1], time.monotonic()))
                    if parts[1] == "estop":
                        self.stopped.set()
                    self.set_state(TRANSITIONS[parts[1]].label, parts[1])
                    self._send(f"OK {parts[1]}")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._writers.remove(writer)

    def _send(self, line: str) -> None:
        for w in self._writers:
            w.write((line + "\n").encode())

    # --- what a test does to the device ---
    def set_state(self, label: str, reason: str = "") -> None:
        self.state = DeviceState[label.upper()]
        self._send(f"STATE {label} {reason}".rstrip())

    def alarm(self, code: str = "A", text: str = "alarm") -> None:
        self._alarm_n += 1
        self._send(f"ALARM {code}{self._alarm_n} {text}")

    def sample(self, name: str, value: float) -> None:
        self._send(f"SAMPLE {name} {value}")

    def drop_link(self) -> None:
        """Close the driver's connection: the supervisor reconnects it."""
        for w in list(self._writers):
            w.close()

    def request(self, kind: str, text: str) -> None:
        self._send(f"REQUEST {kind} {text}")


class TestOptions(DriverOptions):
    pass


class TestDriver:
    """The driver of the test device (state mapping is 1:1: the sim speaks PackML)."""

    name: ClassVar[str] = "testdev"
    Options: ClassVar[type[DriverOptions]] = TestOptions
    simulator: ClassVar[str] = "testdev"

    def __init__(self, ctx: DriverContext, options: Any) -> None:
        self.ctx = ctx
        self.tracker = StateTracker(ctx.device_id, ctx.emit, DeviceState.UNAVAILABLE)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[str, asyncio.Future[None]] = {}

    def metrics(self) -> Sequence[MetricSpec]:
        return [MetricSpec("temp", MetricType.FLOAT, "degC")]

    async def __aenter__(self) -> Self:
        host, _, port = (self.ctx.endpoint or "").rpartition(":")
        try:
            self._reader, self._writer = await asyncio.open_connection(host, int(port))
            hello = (await self._reader.readline()).decode().split()
        except OSError as exc:
            raise LinkError(str(exc)) from exc
        if len(hello) != 2 or hello[0] != "HELLO":
            raise LinkError(f"unexpected greeting {hello!r}")
        self.tracker.state = DeviceState[hello[1].upper()]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def serve(self) -> None:
        assert self._reader is not None
        dev = self.ctx.device_id
        while True:
            line = await self._reader.readline()
            if not line:
                raise LinkError("simulator closed the link")
            kind, _, rest = line.decode().strip().partition(" ")
            if kind == "STATE":
                label, _, reason = rest.partition(" ")
                self.tracker.set(DeviceState[label.upper()], reason)
            elif kind == "SAMPLE":
                name, _, value = rest.partition(" ")
                self.ctx.emit(Samples(dev, (Sample(name, float(value)),)))
            elif kind == "ALARM":
                code, _, text = rest.partition(" ")
                self.ctx.emit(Alarm(dev, code, text))
            elif kind == "REQUEST":
                req, _, text = rest.partition(" ")
                self.ctx.emit(OperatorRequest(dev, RequestKind(req), text, step_key="j1/0"))
            elif kind == "OK":
                fut = self._acks.pop(rest, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def status(self) -> DeviceStatus:
        return DeviceStatus(self.tracker.state)

    async def _command(self, name: str) -> None:
        if self._writer is None:
            raise LinkError("not connected")
        fut = asyncio.get_running_loop().create_future()
        self._acks[name] = fut
        self._writer.write(f"CMD {name}\n".encode())
        async with asyncio.timeout(5):
            await fut

    async def run(self, step: Step, progress: Any) -> StepResult:
        progress(Progress(fraction=1.0))
        return StepResult(StepOutcome.DONE)

    async def pause(self) -> None:
        await self._command("pause")

    async def resume(self) -> None:
        await self._command("resume")

    async def stop(self) -> None:
        await self._command("stop")

    async def emergency_stop(self) -> None:
        await self._command("estop")

    async def reset(self) -> None:
        await self._command("reset")

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("the test device has no automatic changeover")
