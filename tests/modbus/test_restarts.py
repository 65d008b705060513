"""The PLC is killed while connected and comes back, three times, over TCP and over
RTU: the supervisor reconnects the driver each time, and a recipe cycle runs after
each return. Issue 14: on Python 3.11/3.12 the second connection used to die in
its first read and the device task ended silently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from support.ports import free_port
from support.restarts import FreshSim, kill_and_return

from cellctl.driver import DriverContext
from cellctl.errors import LinkError
from cellctl.model import Step

from .conftest import BOUND, plc_options, recipe_step
from .test_rtu import SERIAL


def _step(i: int) -> Step:
    return recipe_step(f"job{i}", cycle_time_s=2.0)  # 0.2 s real at time factor 10


async def test_modbus_tcp_plc_killed_three_times_comes_back_and_cycles() -> None:
    port = free_port()
    device = FreshSim(lambda: PlcSim(PlcSimOptions(time_factor=10.0, port=port)))
    options = plc_options(host="127.0.0.1", port=port)
    runner = await kill_and_return(device, "modbus", options, _step)
    assert device.lives == 4 and runner.connects == 4


async def test_modbus_rtu_plc_killed_three_times_comes_back_and_cycles(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS485-plc"
    device = FreshSim(lambda: PlcSim(PlcSimOptions(transport="rtu", time_factor=10.0)), link)
    options = plc_options(transport="rtu", serial={**SERIAL, "port": str(link)})
    runner = await kill_and_return(device, "modbus", options, _step)
    assert device.lives == 4 and runner.connects == 4


async def test_a_lost_serve_leaves_no_cancel_request_on_the_task_that_ran_it() -> None:
    """The cause of issue 14, without the supervisor: serve() and the next connection in
    one task, as the supervisor used to run them. A failed serve() left a cancel request
    on that task (Python 3.11/3.12), and the next connection's first read raised
    CancelledError."""
    port = free_port()
    task = asyncio.current_task()
    assert task is not None
    for i in range(3):
        async with PlcSim(PlcSimOptions(time_factor=10.0, port=port)) as plc:
            driver = ModbusDriver(DriverContext("plc"), plc_options(host="127.0.0.1", port=port))
            try:
                async with asyncio.timeout(BOUND):
                    await driver.__aenter__()  # its first read raised CancelledError
                assert await driver.read_tag("model") == 1515

                async def kill(plc: PlcSim = plc) -> None:
                    await asyncio.sleep(0.05)
                    await plc.__aexit__(None, None, None)  # the PLC dies under serve()

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(kill())
                    with pytest.raises(LinkError):
                        async with asyncio.timeout(BOUND):
                            await driver.serve()  # in this task, as the supervisor did
            finally:
                await driver.__aexit__(None, None, None)
        assert task.cancelling() == 0, f"round {i}: a cancel request was left behind"
