"""A `backend = "sim"` device's simulator as a child process of the daemon.

A real device is another machine: its simulator should not share the daemon's
memory, CPU or event loop. So the supervisor starts `cellctl sim NAME
--watch-stdin` (the standalone command, cellctl/simserve.py), reads the
endpoint from the first line it prints, and relays its log lines (stderr, JSON)
into the daemon's log with the device's id. The child watches its stdin, a pipe
only the daemon holds: when the daemon goes, however it goes (SIGKILL
included), the pipe closes and the child stops by itself. It runs in a session
of its own so that a Ctrl-C at the daemon's terminal reaches the daemon only,
which then stops its children in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NoReturn, Self

from cellctl.driver import SimOptions
from cellctl.errors import CellError

LINE_LIMIT = 1 << 20  # a log line with a long traceback in it is still one line
_LEVELS = logging.getLevelNamesMapping()


class SimulatorExited(CellError):
    """The simulator's process ended, or never printed its endpoint."""


def sim_args(name: str, options: SimOptions | None) -> list[str]:
    """`cellctl sim` arguments giving the child exactly the options the config set."""
    values: Mapping[str, Any] = (
        options.model_dump(mode="json", by_alias=True, exclude_unset=True) if options else {}
    )
    args = ["sim", name, "--watch-stdin"]
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


class SimChild:
    """One simulator process: entered, it has printed its endpoint; exited, it is gone."""

    def __init__(
        self,
        name: str,
        options: SimOptions | None,
        log: Any,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "cellctl", *sim_args(name, options)]
        self.log = log
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.endpoint = ""
        self.pid = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self._last_line = ""

    async def __aenter__(self) -> Self:
        proc = self._proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        self.pid = proc.pid
        # Owned here: ends at the child's EOF, awaited (or cancelled) by _stop.
        self._relay = asyncio.get_running_loop().create_task(
            self._relay_lines(), name=f"sim-log:{self.pid}"
        )
        try:
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(self.start_timeout_s):
                    line = await proc.stdout.readline()
            except TimeoutError:
                raise SimulatorExited(
                    f"simulator {self.name} printed no endpoint within {self.start_timeout_s}s"
                ) from None
            self.endpoint = line.decode(errors="replace").strip()
            if not self.endpoint:
                code = await proc.wait()
                await self._drain_relay()
                said = f": {self._last_line}" if self._last_line else ""
                raise SimulatorExited(
                    f"simulator {self.name} exited with code {code} before it started{said}"
                )
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def wait_exit(self) -> NoReturn:
        """Wait for the child to end by itself; raise SimulatorExited when it does."""
        assert self._proc is not None
        code = await self._proc.wait()
        await self._drain_relay()
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise SimulatorExited(f"simulator process {self.pid} ({self.name}) {how}")

    async def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.returncode is None:
                if proc.stdin is not None:
                    proc.stdin.close()  # the child's own signal to stop (see simserve)
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    async with asyncio.timeout(self.stop_timeout_s):
                        await proc.wait()
                except TimeoutError:
                    self.log.warning("simulator did not stop in time; killing it", pid=self.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # hurried: never leave the child behind
            raise
        finally:
            await self._drain_relay()

    async def _drain_relay(self) -> None:
        relay = self._relay
        if relay is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(relay)
        if not relay.done():
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _relay_lines(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        stderr = self._proc.stderr
        while True:
            try:
                raw = await stderr.readline()
            except ValueError:  # longer than LINE_LIMIT: its tail comes as the next line
                continue
            if not raw:
                return
            self._relay_one(raw.decode(errors="replace").rstrip())

    def _relay_one(self, text: str) -> None:
        if not text:
            return
        self._last_line = text
        try:
            fields = json.loads(text)
        except json.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):  # a bare line (a traceback the child printed)
            self.log.warning("simulator output", sim_pid=self.pid, line=text)
            return
        level = _LEVELS.get(str(fields.pop("level", "info")).upper(), logging.INFO)
        event = str(fields.pop("event", "simulator output"))
        fields.pop("timestamp", None)
        fields = {k: v for k, v in fields.items() if k not in ("device", "sim_pid")}
        self.log.log(level, event, sim_pid=self.pid, **fields)
