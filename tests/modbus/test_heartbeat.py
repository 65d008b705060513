"""The heartbeat keeps a real PLC honest: kill -9 the daemon and the PLC faults.

Everything here is a real process: `cellctl sim modbus-plc` standalone, `cellctl run`
on a config pointing at it, and a raw pymodbus client watching the PLC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from .conftest import BOUND, HERE

CELLCTL = [sys.executable, "-m", "cellctl"]


@contextlib.asynccontextmanager
async def process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def device_config(host: str, port: int) -> str:
    """plc.toml nested under [devices.plc], pointing at the standalone simulator."""
    lines = [
        "[cell]",
        'name = "heartbeat-test"',
        "[supervisor]",
        "backoff_initial_s = 0.2",
        "[devices.plc]",
        'driver = "modbus"',
        f'host = "{host}"',
        f"port = {port}",
    ]
    for line in (HERE / "plc.toml").read_text().splitlines():
        header = re.match(r"^\[(.+)\]$", line)
        if header:
            lines.append(f"[devices.plc.{header.group(1)}]")
        elif line.startswith("interval_s = 0.5"):
            lines.append("interval_s = 0.2")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


async def _read(client: AsyncModbusTcpClient, fc: int, address: int) -> int:
    if fc == 2:
        resp = await client.read_discrete_inputs(address, count=1, device_id=1)
        assert not resp.isError()
        return int(resp.bits[0])
    resp = await (client.read_holding_registers if fc == 3 else client.read_input_registers)(
        address, count=1, device_id=1
    )
    assert not resp.isError()
    return int(resp.registers[0])


async def test_killed_daemon_stops_its_heartbeat_and_the_plc_faults(tmp_path: Path) -> None:
    async with process(
        *CELLCTL, "sim", "modbus-plc", "--time-factor", "10", "--set", "watchdog_s=1.0"
    ) as sim:
        assert sim.stdout is not None
        async with asyncio.timeout(BOUND):
            endpoint = (await sim.stdout.readline()).decode().strip()
        host, _, port = endpoint.rpartition(":")
        config = tmp_path / "cell.toml"
        config.write_text(device_config(host, int(port)))
        client = AsyncModbusTcpClient(host, port=int(port), timeout=1.0)
        assert await client.connect()
        try:
            async with process(*CELLCTL, "run", "-c", str(config)) as daemon:
                # The daemon beats: the register changes, more than once.
                async with asyncio.timeout(BOUND * 2):
                    seen = {await _read(client, 3, 0)}
                    while len(seen) < 3:
                        await asyncio.sleep(0.05)
                        seen.add(await _read(client, 3, 0))
                assert await _read(client, 2, 13) == 0, "no fault while the heartbeat runs"
                os.kill(daemon.pid, signal.SIGKILL)
                await daemon.wait()
            async with asyncio.timeout(BOUND):
                while not await _read(client, 2, 13):
                    await asyncio.sleep(0.05)
            assert await _read(client, 4, 2) == 1, "fault code 1: heartbeat lost"
            assert await _read(client, 4, 0) == 3, "PLC state: faulted"
        finally:
            client.close()
