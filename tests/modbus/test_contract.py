"""The driver contract suite, run on the simulated PLC."""

from __future__ import annotations

from cellctl_drivers.contract import ContractCase, DriverContract
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions

from cellctl.model import Program, ProgramKind, Step

from .conftest import plc_options


def _step(index: int, cycle_time_s: float) -> Step:
    program = Program(
        ProgramKind.PLC_RECIPE,
        name="3",
        parameters={"speed": 80.0, "force": 250.0, "cycle_time": cycle_time_s, "name": "bracket-a"},
    )
    return Step("contract", index, "plc-cycle", program)


class TestModbusContract(DriverContract):
    case = ContractCase(
        driver=ModbusDriver,
        simulator=PlcSim,
        options=plc_options(),
        sim_options=PlcSimOptions(time_factor=10.0),
        short_step=_step(0, 3.0),  # 0.3 s real at time factor 10
        long_step=_step(1, 600.0),  # a minute real: long enough to pause, stop and e-stop
    )
