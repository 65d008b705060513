"""Modbus I/O through the driver against raw pymodbus, on one simulated PLC, in one run.

1. Requests/s: the driver reading one 10-register tag group, request after request,
   against pymodbus's sequential async client reading the same 10 registers.
   Target: driver ≥ 0.9 × raw.
2. Values/s for a realistic scattered map (status words, floats, counters, coils spread
   over four tables): the driver's merged poll against raw pymodbus reading one tag per
   request and converting it with pymodbus's own converter. Target: the speed-up reaches
   the batching factor (tags per request).

Rounds alternate baseline and driver; figures are medians over rounds, because the
machine is shared and noisy. Part 1 also prints the median of per-round ratios: each
round measures both sides back to back, so a change in machine load between rounds
cancels out of that figure, not out of the ratio of the two medians.

    python benchmarks/modbus_io.py            # full
    python benchmarks/modbus_io.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.options import ModbusOptions, Table
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from pymodbus.client import AsyncModbusTcpClient
from simproc import sim_process

from cellctl.driver import DriverContext

_FC = {
    Table.COIL: "read_coils",
    Table.DISCRETE_INPUT: "read_discrete_inputs",
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
}


_RAW_TYPE = {
    "int16": AsyncModbusTcpClient.DATATYPE.INT16,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
    "string": AsyncModbusTcpClient.DATATYPE.STRING,
}


def scattered_map() -> dict[str, Any]:
    """~60 tags as a real machine PLC spreads them: blocks with small holes, far islands."""
    tags: dict[str, Any] = {}
    for i in range(12):  # status/alarm words, some holes
        tags[f"status_{i}"] = {"table": "input", "address": i * 2 + (i % 3 == 0), "type": "uint16"}
    for i in range(10):  # process values, float32 every 4 registers
        tags[f"pv_{i}"] = {"table": "input", "address": 100 + i * 4, "type": "float32"}
    for i in range(8):  # counters, uint32
        tags[f"count_{i}"] = {"table": "input", "address": 300 + i * 3, "type": "uint32"}
    for i in range(10):  # setpoints
        tags[f"sp_{i}"] = {"table": "holding", "address": 1000 + i * 3, "type": "float32"}
    tags["recipe"] = {"table": "holding", "address": 1100, "type": "string", "length": 20}
    for i in range(12):  # coils and sensors
        tags[f"coil_{i}"] = {"table": "coil", "address": i * 5}
        tags[f"sensor_{i}"] = {"table": "discrete_input", "address": 200 + i * 2}
    return {"tags": tags, "max_gap": 10, "max_bits_gap": 16}


async def rate(n: int, one: Any) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await one()
    return n / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def plc(in_process: bool) -> AsyncIterator[str]:
    """The simulated PLC's endpoint. By default in its own process, as a PLC is its own
    device: in this process its server's work would be charged to the client side."""
    if in_process:
        async with PlcSim(PlcSimOptions(strict_map=False)) as sim:
            yield sim.endpoint
        return
    async with sim_process("modbus-plc", {"strict_map": "false"}, start_s=20) as (endpoint, _):
        yield endpoint


async def main(quick: bool, in_process: bool) -> None:
    rounds, per_round, polls = (5, 200, 20) if quick else (15, 1000, 100)
    where = "in this process" if in_process else "in its own process"
    print(f"simulated PLC {where}")
    async with plc(in_process) as endpoint:
        host, _, port = endpoint.rpartition(":")
        raw = AsyncModbusTcpClient(host, port=int(port), timeout=2.0, reconnect_delay=0)
        assert await raw.connect()

        # --- 1. requests/s -------------------------------------------------------
        one = ModbusOptions.model_validate(
            {
                "tags": {
                    "block": {"table": "holding", "address": 1000, "type": "string", "length": 20}
                }
            }
        )
        driver = ModbusDriver(DriverContext("bench", endpoint=endpoint), one)
        async with driver:

            async def raw_read() -> None:
                resp = await raw.read_holding_registers(1000, count=10, device_id=1)
                assert not resp.isError()

            async def driver_read() -> None:
                await driver.read_group("default")

            raw_rates, drv_rates = [], []
            await rate(50, raw_read)
            await rate(50, driver_read)
            for i in range(rounds):  # ABBA order: drift in machine load hits both alike
                pair = [(raw_rates, raw_read), (drv_rates, driver_read)]
                for out, fn in pair if i % 2 == 0 else reversed(pair):
                    out.append(await rate(per_round, fn))
        r_raw, r_drv = statistics.median(raw_rates), statistics.median(drv_rates)
        paired = statistics.median(d / r for d, r in zip(drv_rates, raw_rates, strict=True))
        print("requests/s (10 registers each, sequential, loopback)")
        print(f"  raw pymodbus client   median {r_raw:8.0f} req/s")
        print(f"  cellctl driver        median {r_drv:8.0f} req/s")
        print(f"  ratio driver/raw      {r_drv / r_raw:.2f}   (target >= 0.90)")
        print(f"  same, paired by round {paired:.2f}")

        # --- 2. values/s, scattered map --------------------------------------------
        options = ModbusOptions.model_validate(scattered_map())
        driver = ModbusDriver(DriverContext("bench", endpoint=endpoint), options)
        tags = list(options.tags.items())
        async with driver:
            reads = driver.group_reads["default"]
            factor = len(tags) / len(reads)

            kinds = {name: _RAW_TYPE.get(tag.dtype.value) for name, tag in tags}

            async def raw_poll() -> None:
                # What a pymodbus user writes: one read per tag, then pymodbus's converter.
                values = {}
                for name, tag in tags:
                    method = getattr(raw, _FC[tag.table])
                    resp = await method(tag.address, count=tag.size, device_id=1)
                    assert not resp.isError()
                    kind = kinds[name]
                    if kind is None:
                        values[name] = bool(resp.bits[0])
                    else:
                        values[name] = raw.convert_from_registers(resp.registers, kind)
                assert len(values) == len(tags)

            async def driver_poll() -> None:
                values = await driver.read_group("default")
                assert len(values) == len(tags)

            async def raw_merged() -> None:
                # The driver's requests sent raw, values not decoded: the cost of the frames.
                for read in reads:
                    method = getattr(raw, _FC[read.table])
                    resp = await method(read.address, count=read.count, device_id=1)
                    assert not resp.isError()

            raw_v, drv_v, merged_v = [], [], []
            await rate(3, raw_poll)
            await rate(3, driver_poll)
            for i in range(rounds):
                trio = [(raw_v, raw_poll), (drv_v, driver_poll), (merged_v, raw_merged)]
                for out, fn in trio if i % 2 == 0 else reversed(trio):
                    out.append(await rate(polls, fn) * len(tags))
        v_raw, v_drv = statistics.median(raw_v), statistics.median(drv_v)
        v_merged = statistics.median(merged_v)
        print(f"values/s, scattered map: {len(tags)} tags in 4 tables -> {len(reads)} requests")
        print(f"  raw, one tag/request  median {v_raw:8.0f} values/s")
        print(f"  cellctl merged poll   median {v_drv:8.0f} values/s")
        paired_v = statistics.median(d / r for d, r in zip(drv_v, raw_v, strict=True))
        print(f"  speed-up              {v_drv / v_raw:.2f}x   (batching factor {factor:.2f})")
        print(f"  same, paired by round {paired_v:.2f}x")
        print(
            f"  raw, the same {len(reads)} merged requests, no decoding: {v_merged:8.0f} values/s"
        )
        print(
            f"  driver / raw merged   {v_drv / v_merged:.2f}   (what decoding and the driver cost)"
        )
        raw.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument(
        "--in-process", action="store_true", help="run the simulated PLC in this process"
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.in_process))
