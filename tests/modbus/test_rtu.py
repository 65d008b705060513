"""Modbus RTU end to end: the driver's serial client and the simulated PLC's pymodbus
serial server, on real pseudo-terminals (drivers/modbus/serial_line.py joins them).

A Linux pseudo-terminal refuses parity, so these run 8N2 (the spec's framing
without parity); a real adapter runs the driver's default, 8E1.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.link import ExceptionResponse
from cellctl_drivers.modbus.options import ModbusOptions, Table
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions

from cellctl.driver import DriverContext
from cellctl.errors import DeviceFault, LinkError
from cellctl.model import StepOutcome

from .conftest import BOUND, plc_options, recipe_step, running
from .test_heartbeat import process
from .test_plan import _scattered

SERIAL: dict[str, Any] = {"port": "/dev/null", "baudrate": 19200, "parity": "N", "stopbits": 2}


def rtu_options(**changes: Any) -> ModbusOptions:
    return plc_options(transport="rtu", serial=SERIAL, **changes)


@pytest.fixture
async def rtu_sim() -> AsyncIterator[PlcSim]:
    async with PlcSim(PlcSimOptions(transport="rtu", time_factor=10.0)) as plc:
        yield plc


async def test_the_simulator_serves_rtu_on_a_device_path(rtu_sim: PlcSim) -> None:
    fd = os.open(rtu_sim.endpoint, os.O_RDWR | os.O_NOCTTY)
    try:
        assert os.isatty(fd)
    finally:
        os.close(fd)
    async with running(rtu_sim, rtu_options()) as driver:
        assert driver.link.where == f"{rtu_sim.endpoint} unit 1"
        assert await driver.read_tag("model") == 1515


async def test_a_scattered_map_polls_in_the_planned_requests() -> None:
    scattered = _scattered(10, 125).model_dump()
    options = ModbusOptions.model_validate({**scattered, "transport": "rtu", "serial": SERIAL})
    async with PlcSim(PlcSimOptions(transport="rtu", strict_map=False)) as plc:
        words = struct.unpack(">2H", struct.pack(">f", 1.5))
        plc.memory.tables[Table.INPUT].update({10: words[0], 11: words[1], 20: 0xFFF6, 105: 7})
        driver = ModbusDriver(DriverContext("plc", endpoint=plc.endpoint), options)
        async with asyncio.timeout(BOUND), driver:
            before = plc.request_total
            values = await driver.read_group("default")
            seen = plc.request_total - before
    assert set(values) == set(options.tags)
    assert seen == len(driver.group_reads["default"]) < len(options.tags)
    assert values["speed"] == 1.5 and values["temp"] == -10 and values["count_b"] == 7


async def test_writes_reach_the_plc(rtu_sim: PlcSim) -> None:
    async with running(rtu_sim, rtu_options()) as driver, asyncio.timeout(BOUND):
        await driver.write_tag("conveyor_speed", 150.5)
        await driver.write_tag("recipe_name", "bracket-b")
        await driver.write_tag("hold", True)
        assert rtu_sim.get("conveyor_speed") == 150.5
        assert rtu_sim.get("recipe_name") == "bracket-b"
        assert await driver.read_tag("recipe_name") == "bracket-b"
        await rtu_sim.wait_until(lambda s: s.get("held"))
        assert await driver.read_tag("held") is True


async def test_the_recipe_handshake_runs_a_normal_cycle(rtu_sim: PlcSim) -> None:
    async with running(rtu_sim, rtu_options()) as driver, asyncio.timeout(BOUND):
        result = await driver.run(recipe_step(speed=80.0, cycle_time_s=2.0), lambda p: None)
    assert result.outcome == StepOutcome.DONE, result.message
    assert rtu_sim.request_sets == 1 and rtu_sim.request_edges == 1
    assert rtu_sim.get("parts_good") == 1 and rtu_sim.get("conveyor_speed") == 80.0


async def test_exception_responses_name_the_tag(rtu_sim: PlcSim) -> None:
    rtu_sim.inject_exception(Table.HOLDING, 14, code=6)
    async with running(rtu_sim, rtu_options()) as driver, asyncio.timeout(BOUND):
        with pytest.raises(DeviceFault) as err:
            await driver.write_tag("clamp_force", 100.0)
        assert isinstance(err.value, ExceptionResponse) and err.value.code == 6
        assert "'clamp_force' (holding 14)" in str(err.value)
        with pytest.raises(ExceptionResponse, match=r"holding 17\.\.18.*illegal data address"):
            await driver.link.read(Table.HOLDING, 17, 2, "reading holding 17..18")
        assert await driver.read_tag("part_present") is True, "the line still works"


async def test_a_pulled_cable_while_requesting_does_not_request_twice(rtu_sim: PlcSim) -> None:
    """The request write reaches the PLC, then the adapter is unplugged and its answer
    lost: the driver reopens the port, reads the handshake and goes on."""
    rtu_sim.drop_on_request = True
    async with running(rtu_sim, rtu_options()) as driver, asyncio.timeout(BOUND):
        result = await driver.run(recipe_step(cycle_time_s=1.0), lambda p: None)
    assert result.outcome == StepOutcome.DONE, result.message
    assert rtu_sim.connections_dropped == 1 and driver.link.reconnects >= 1
    assert rtu_sim.request_sets == 1 and rtu_sim.request_edges == 1


async def test_a_cable_pulled_again_and_again_is_survived(rtu_sim: PlcSim) -> None:
    rtu_sim.drop_every = 7
    async with running(rtu_sim, rtu_options()) as driver, asyncio.timeout(BOUND):
        for _ in range(20):
            assert await driver.read_tag("door_closed") is True
    assert rtu_sim.connections_dropped >= 2 and driver.link.reconnects >= 2


async def test_parity_a_pseudo_terminal_refuses_is_a_link_error(rtu_sim: PlcSim) -> None:
    options = plc_options(transport="rtu", serial={**SERIAL, "parity": "E", "stopbits": 1})
    driver = ModbusDriver(DriverContext("plc", endpoint=rtu_sim.endpoint), options)
    with pytest.raises(LinkError, match=r"the port refuses 19200 8E1"):
        async with asyncio.timeout(BOUND), driver:
            pass


async def test_cellctl_sim_prints_the_device_path_to_open() -> None:
    cmd = [sys.executable, "-m", "cellctl", "sim", "modbus-plc", "--set", "transport=rtu"]
    async with process(*cmd) as sim:
        assert sim.stdout is not None
        async with asyncio.timeout(BOUND):
            path = (await sim.stdout.readline()).decode().strip()
        driver = ModbusDriver(DriverContext("plc", endpoint=path), rtu_options())
        async with asyncio.timeout(BOUND), driver:
            assert await driver.read_tag("door_closed") is True
