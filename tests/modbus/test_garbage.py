"""Garbage from a PLC is survived: a malformed answer is a clear error for that read and
the link goes on serving the reads after it.

The device here is a real TCP server that speaks Modbus TCP framing by hand, because
the simulated PLC (pymodbus's server) only sends well-formed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.options import ModbusOptions

from cellctl.driver import DriverContext
from cellctl.errors import LinkError

from .conftest import BOUND


class BrokenPlc:
    """Answers holding-register reads with each register = its address, except that the
    answers listed in `faults` (by request number) are garbage of the named kind."""

    def __init__(self, faults: dict[int, str]) -> None:
        self.faults = faults
        self.requests = 0
        self.port = 0
        self._handlers: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                fc, address, count = struct.unpack(">BHH", pdu[:5])
                self.requests += 1
                kind = self.faults.get(self.requests, "ok")
                if kind == "noise":
                    writer.write(b"\xde\xad\xbe\xef" * 3)
                else:
                    regs = [(address + i) & 0xFFFF for i in range(count)]
                    body = struct.pack(f">BB{count}H", fc, 2 * count, *regs)
                    if kind == "overlong_count":  # says 250 bytes follow, sends the real ones
                        body = bytes([fc, 250]) + body[2:]
                    elif kind == "odd_count":
                        body = bytes([fc, 2 * count - 1]) + body[2 : 2 * count + 1]
                    writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                yield f"127.0.0.1:{self.port}"
            finally:
                for writer in self._writers:
                    writer.close()
                async with asyncio.timeout(BOUND):
                    await asyncio.gather(*self._handlers)


def _options() -> ModbusOptions:
    return ModbusOptions.model_validate(
        {
            "timeout_s": 0.3,
            "retries": 0,
            "tags": {
                "a": {"table": "holding", "address": 40, "type": "uint16"},
                "b": {"table": "holding", "address": 41, "type": "uint16"},
            },
        }
    )


@pytest.mark.parametrize("kind", ["overlong_count", "odd_count"])
async def test_a_malformed_answer_costs_a_reconnect_and_the_read_is_sent_again(kind: str) -> None:
    # pymodbus drops a connection that delivers an undecodable frame; reads are safe to
    # repeat, so the link reconnects and asks again.
    plc = BrokenPlc({1: kind})
    async with plc.serving() as endpoint, asyncio.timeout(BOUND):
        driver = ModbusDriver(DriverContext("plc", endpoint=endpoint), _options())
        async with driver:
            assert await driver.read_group("default") == {"a": 40, "b": 41}
            assert driver.link.reconnects == 1
            assert plc.requests == 2
            for _ in range(3):
                assert await driver.read_group("default") == {"a": 40, "b": 41}
            assert driver.link.reconnects == 1


async def test_noise_instead_of_an_answer_fails_that_read_only() -> None:
    plc = BrokenPlc({1: "noise"})
    async with plc.serving() as endpoint, asyncio.timeout(BOUND):
        driver = ModbusDriver(DriverContext("plc", endpoint=endpoint), _options())
        async with driver:
            with pytest.raises(LinkError, match=r"holding 40\.\.41 .*: no answer"):
                await driver.read_group("default")
            # The noise is discarded with the next request; its answer decodes as before.
            for _ in range(3):
                assert await driver.read_group("default") == {"a": 40, "b": 41}
