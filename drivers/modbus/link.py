"""The Modbus link: one pymodbus client, bounded requests, retries, and error translation.

This is the boundary where pymodbus stops: callers see lists of ints/bools or
cellctl errors, never a pymodbus exception.

- No answer within `timeout_s` → retried `retries` times → LinkError.
- The connection drops → one reconnect and the request again; if that fails,
  LinkError (the supervisor's backoff takes over).
- An exception response → ExceptionResponse (a DeviceFault) with the code's
  name; the caller adds which tag and address it was about.

pymodbus notices a closed TCP connection at once but lets the pending
request wait out its timeout; the disconnect callback cuts that wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import termios
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from cellctl.errors import DeviceFault, LinkError

from .answers import READ_ANSWERS
from .options import ModbusOptions, Table
from .turns import Turns

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (still processing)",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_READ_REQUEST: dict[Table, type[ModbusPDU]] = {
    Table.COIL: ReadCoilsRequest,
    Table.DISCRETE_INPUT: ReadDiscreteInputsRequest,
    Table.HOLDING: ReadHoldingRegistersRequest,
    Table.INPUT: ReadInputRegistersRequest,
}


What = str | Callable[[], str]
"""What a request is about, for error messages; a callable is only called on an error."""


def _text(what: What) -> str:
    return what if isinstance(what, str) else what()


class ExceptionResponse(DeviceFault):
    """The PLC answered with a Modbus exception response."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        self.what = what
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"{what}: PLC answered exception {code} ({name})")


class _Lost(Exception):
    pass


class Unconfirmed(LinkError):
    """The connection dropped while a write was in flight; it was reconnected but the
    write not repeated: it may or may not have taken effect. Read before acting again."""


class Link:
    """A connected Modbus client. Requests take turns (turns.py): one at a time."""

    def __init__(self, options: ModbusOptions, endpoint: str | None = None) -> None:
        self._o = options
        self._host, self._port = options.host, options.port
        self._device = options.serial.port if options.serial is not None else ""
        if endpoint and options.transport == "rtu":
            self._device = endpoint  # a simulator's pseudo-terminal
        elif endpoint:
            host, _, port = endpoint.rpartition(":")
            self._host, self._port = host or options.host, int(port)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._turns = Turns()
        self._waiting: asyncio.Task[Any] | None = None  # the task awaiting an answer
        self._cut_sent = False
        self._lost = False
        self._generation = 0
        self.requests = 0
        self.reconnects = 0
        self.last_ok = 0.0

    @property
    def where(self) -> str:
        if self._o.transport == "rtu":
            return f"{self._device} unit {self._o.unit_id}"
        return f"{self._host}:{self._port} unit {self._o.unit_id}"

    def make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """A pymodbus client for the options; it does no I/O until connect()."""
        o = self._o
        # Our own retry loop and reconnects: pymodbus's would re-send silently
        # and reconnect from background tasks nobody owns.
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if o.transport == "rtu":
            assert o.serial is not None
            client = AsyncModbusSerialClient(
                self._device,
                framer=FramerType.RTU,
                baudrate=o.serial.baudrate,
                bytesize=o.serial.bytesize,
                parity=o.serial.parity,
                stopbits=o.serial.stopbits,
                timeout=o.timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._watch(),
            )
        else:
            client = AsyncModbusTcpClient(
                self._host,
                port=self._port,
                timeout=o.timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._watch(),
            )
        for answer in READ_ANSWERS:
            client.register(answer)
        return client

    def _watch(self) -> Callable[[bool], None]:
        """A disconnect callback for one client: a closed earlier client reports late."""
        self._generation += 1
        generation = self._generation

        def on_connect(up: bool) -> None:
            if up or generation != self._generation:
                return
            self._lost = True
            if self._waiting is not None and not self._cut_sent:
                self._cut_sent = True
                self._waiting.cancel("modbus connection lost")

        return on_connect

    async def connect(self) -> None:
        self.close()
        self._lost = False
        try:
            self._client = self.make_client()
        except (OSError, ValueError, ModbusException) as exc:
            raise LinkError(f"cannot set up the link to {self.where}: {exc}") from exc
        try:
            async with asyncio.timeout(self._o.timeout_s * 2):
                ok = await self._client.connect()
        except TimeoutError:
            ok = False
        except (OSError, ModbusException) as exc:
            self.close()
            raise LinkError(f"cannot connect to {self.where}: {exc}") from exc
        except termios.error as exc:
            # pyserial lets the port's refusal of a setting through as it is (a
            # pseudo-terminal refuses parity, some adapters a baud rate).
            self.close()
            s = self._o.serial
            settings = f"{s.baudrate} {s.bytesize}{s.parity}{s.stopbits}" if s else "?"
            raise LinkError(f"{self.where}: the port refuses {settings}: {exc}") from exc
        if not ok:
            self.close()
            raise LinkError(f"cannot connect to {self.where}")
        self.last_ok = time.monotonic()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected and not self._lost

    async def call(
        self,
        call: Callable[[Any], Awaitable[Any]],
        what: What,
        resend: bool = True,
        urgent: bool = False,
    ) -> Any:
        """One request with timeouts, retries and at most one reconnect.

        With `resend=False` a request whose connection dropped is not sent again
        after the reconnect: Unconfirmed tells the caller to look first. An
        `urgent` request goes before every request waiting for the link.
        """
        # Every coroutine frame between a poll and pymodbus is paid twice per request
        # (suspend, resume), so this is the only one: a free turn is taken without a
        # coroutine, and the checks before and after the answer are plain functions.
        turns = self._turns
        if not turns.take():
            await turns.wait(urgent)
        try:
            reconnected = False
            attempts = 0
            while True:
                try:
                    client, task = self._sending()
                    try:
                        resp = await call(client)
                    except (asyncio.CancelledError, ModbusException, OSError) as exc:
                        if (meaning := self._failure(exc, client, task, what)) is exc:
                            raise
                        raise meaning from exc
                    finally:
                        self._waiting = None
                    return self._answer(resp, task, what)
                except _Lost:
                    if reconnected:
                        raise LinkError(f"{_text(what)}: connection to {self.where} lost") from None
                    reconnected = True
                    self.reconnects += 1
                    await self.connect()
                    if not resend:
                        raise Unconfirmed(
                            f"{_text(what)}: connection dropped; outcome unknown"
                        ) from None
                except TimeoutError:
                    attempts += 1
                    if attempts > self._o.retries:
                        raise LinkError(
                            f"{_text(what)}: no answer from {self.where} "
                            f"after {attempts} tries of {self._o.timeout_s:g} s"
                        ) from None
        finally:
            turns.done()

    def _sending(self) -> tuple[Any, asyncio.Task[Any]]:
        client = self._client
        if self._lost or client is None:
            raise _Lost()
        self.requests += 1
        task = asyncio.current_task()
        assert task is not None
        # pymodbus times the answer out itself (timeout_s); a disconnect cancels the
        # wait at once (see _watch) instead of letting it run into that timeout.
        self._waiting = task
        return client, task

    def _failure(
        self, exc: BaseException, client: Any, task: asyncio.Task[Any], what: What
    ) -> BaseException:
        """What a failed request means to `call`: _Lost, TimeoutError, LinkError, or exc itself."""
        if isinstance(exc, asyncio.CancelledError):
            if self._cut_sent:
                self._cut_sent = False
                if task.uncancel() == 0:
                    return _Lost()
            return exc
        if isinstance(exc, OSError) or self._lost or not client.connected:
            return _Lost()
        if isinstance(exc, ModbusIOException):
            # No answer in time, or an answer to an earlier, abandoned request.
            return TimeoutError(str(exc))
        return LinkError(f"{_text(what)}: {exc}")

    def _answer(self, resp: Any, task: asyncio.Task[Any], what: What) -> Any:
        if self._cut_sent:
            task.uncancel()  # the answer came with the disconnect; it is still good
            self._cut_sent = False
        if task.cancelling():
            # CPython 3.11's wait_for (inside pymodbus) returns the answer and drops a
            # cancellation that arrives with it; honour the cancellation here.
            raise asyncio.CancelledError()
        if resp.isError():
            code = int(getattr(resp, "exception_code", 0) or 0)
            raise ExceptionResponse(code, _text(what))
        self.last_ok = time.monotonic()
        return resp

    # --- typed requests ---------------------------------------------------

    def reader(self, table: Table, address: int, count: int, what: What) -> Reader:
        return Reader(self, table, address, count, what)

    async def read(self, table: Table, address: int, count: int, what: What) -> list[int]:
        """Registers (ints) or bits (0/1 ints) of one table, exactly `count` of them."""
        reader = self.reader(table, address, count, what)
        words = reader.words(await reader.send())
        return [int(w) for w in words[:count]]

    async def write(
        self,
        table: Table,
        address: int,
        values: list[int],
        what: What,
        resend: bool = True,
        urgent: bool = False,
    ) -> None:
        unit = self._o.unit_id

        async def go(c: Any) -> Any:
            if table == Table.COIL:
                if len(values) == 1:
                    return await c.write_coil(address, bool(values[0]), device_id=unit)
                return await c.write_coils(address, [bool(v) for v in values], device_id=unit)
            if len(values) == 1:
                return await c.write_register(address, values[0], device_id=unit)
            return await c.write_registers(address, values, device_id=unit)

        await self.call(go, what, resend, urgent)


class Reader:
    """A read made once and sent many times: polling pays no per-request set-up.

    `send()` is the request (a coroutine from Link.call, no frame of its own) and
    `words()` checks and unpacks its answer.
    """

    __slots__ = ("_bits", "_count", "_link", "_pdu", "_what")

    def __init__(self, link: Link, table: Table, address: int, count: int, what: What) -> None:
        self._link = link
        self._bits = table.is_bits
        self._count = count
        self._what = what
        # The request is built once; pymodbus gives it a new transaction id each time.
        self._pdu = _READ_REQUEST[table](address=address, count=count, dev_id=link._o.unit_id)

    def _request(self, client: Any) -> Any:
        return client.execute(False, self._pdu)

    def send(self) -> Coroutine[Any, Any, Any]:
        return self._link.call(self._request, self._what)

    def words(self, resp: Any) -> list[int]:
        """The answer's registers; for bits, its bools (bool is an int), as many as the
        answer's whole bytes hold: decoders index by offset, so the padding is never read
        and not worth a copy."""
        count = self._count
        if self._bits:
            bits: list[int] = resp.bits
            if len(bits) < count:
                raise LinkError(f"{_text(self._what)}: short answer ({len(bits)} of {count} bits)")
            return bits
        regs: list[int] = resp.registers
        if len(regs) != count:
            raise LinkError(f"{_text(self._what)}: short answer ({len(regs)} of {count} registers)")
        return regs
