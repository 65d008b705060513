"""Fault injection on the simulated PLC: exception responses, slow answers, dropped
connections and a server restart, as the driver (and the supervisor behind it) sees them."""

from __future__ import annotations

import asyncio

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.link import ExceptionResponse
from cellctl_drivers.modbus.options import Table
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions

from cellctl.driver import DriverContext
from cellctl.errors import DeviceFault, LinkError, WrongDevice
from cellctl.model import Event, Quality, Samples

from .conftest import BOUND, plc_options, running


async def test_exception_response_names_tag_and_address(sim: PlcSim) -> None:
    sim.inject_exception(Table.HOLDING, 14, code=6)
    events: list[Event] = []
    async with running(sim, plc_options(), events) as driver:
        with pytest.raises(DeviceFault) as err:
            await driver.write_tag("clamp_force", 100.0)
        assert isinstance(err.value, ExceptionResponse) and err.value.code == 6
        assert "'clamp_force' (holding 14)" in str(err.value)
        assert "exception 6 (server device busy)" in str(err.value)
        with pytest.raises(DeviceFault, match=r"holding 10\.\.16 .*clamp_force@14.*exception 6"):
            await driver.read_group("default")
        # Polling goes on; the refused tags are published with bad quality, the others good.
        async with asyncio.timeout(BOUND):
            while not any(
                isinstance(e, Samples) and any(s.name == "clamp_force" for s in e.samples)
                for e in events
            ):
                await asyncio.sleep(0.02)
        batches = [e for e in events if isinstance(e, Samples)]
        quality = {s.name: s.quality for e in batches for s in e.samples}
        assert quality["clamp_force"] == Quality.BAD
        assert quality["parts_good"] == Quality.GOOD


async def test_unmapped_address_is_illegal_data_address() -> None:
    options = plc_options(max_gap=8)  # spans 17..19, which this PLC does not map
    async with PlcSim(PlcSimOptions()) as plc:
        driver = ModbusDriver(DriverContext("plc", endpoint=plc.endpoint), options)
        async with driver:
            with pytest.raises(ExceptionResponse, match=r"recipe_name@20.*illegal data address"):
                await driver.read_group("default")


async def test_wrong_unit_id_is_a_clear_error(sim: PlcSim) -> None:
    driver = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), plc_options(unit_id=9))
    with pytest.raises(WrongDevice, match=r"identity tags unreadable.*exception 11 \(gateway"):
        async with driver:
            pass


async def test_slow_answers_time_out_into_a_link_error(sim: PlcSim) -> None:
    options = plc_options(timeout_s=0.2, retries=1)
    async with running(sim, options) as driver:
        sim.slow_s = 0.5
        with pytest.raises(LinkError, match=r"no answer .* after 2 tries of 0\.2 s"):
            await driver.read_tag("parts_good")
        sim.slow_s = 0.0


async def test_slow_but_in_time_answers_are_fine(sim: PlcSim) -> None:
    sim.slow_s = 0.05
    async with running(sim, plc_options()) as driver:
        assert await driver.read_tag("temperature") == pytest.approx(21.5)


async def test_dropped_connections_are_survived(sim: PlcSim) -> None:
    sim.drop_every = 7
    async with running(sim, plc_options()) as driver:
        for _ in range(20):
            assert await driver.read_tag("door_closed") is True
        assert sim.connections_dropped >= 2 and driver.link.reconnects >= 2


async def test_server_restart_ends_serve_then_a_new_driver_connects(sim: PlcSim) -> None:
    driver = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), plc_options())

    async def serve_until_lost() -> None:
        with pytest.raises(LinkError, match="cannot connect"):
            await driver.serve()

    async with driver, asyncio.timeout(BOUND), asyncio.TaskGroup() as tg:
        tg.create_task(serve_until_lost())
        await sim.wait_until(lambda s: s.request_total > 3)
        await sim.restart(down_s=0.5)
    again = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), plc_options())
    async with again:
        assert await again.read_tag("part_present") is True
    assert sim.restarts == 1


async def test_a_quick_restart_is_bridged_by_one_reconnect(sim: PlcSim) -> None:
    async with running(sim, plc_options()) as driver:
        await sim.restart()
        assert await driver.read_tag("part_present") is True
        assert driver.link.reconnects >= 1


async def test_another_plc_at_the_address_is_wrong_device() -> None:
    async with PlcSim(PlcSimOptions(model=1200)) as other:
        driver = ModbusDriver(DriverContext("plc", endpoint=other.endpoint), plc_options())
        with pytest.raises(WrongDevice, match=r"model = 1200 \(expected 1515\)"):
            async with driver:
                pass


async def test_a_refused_heartbeat_ends_serve_with_a_clear_error(sim: PlcSim) -> None:
    sim.inject_exception(Table.HOLDING, 0, code=4)
    driver = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), plc_options())
    async with driver, asyncio.timeout(BOUND):
        with pytest.raises(DeviceFault, match=r"'heartbeat' \(holding 0\).*exception 4"):
            await driver.serve()
