"""The PLC is killed while connected and comes back, three times, over TCP and over
RTU: the supervisor reconnects the driver each time, and a recipe cycle runs after
each return. Issue 14: on Python 3.11/3.12 the second connection used to die in
its first read and the device task ended silently."""

from __future__ import annotations

from pathlib import Path

from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from support.ports import free_port
from support.restarts import FreshSim, kill_and_return

from cellctl.model import Step

from .conftest import plc_options, recipe_step
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
