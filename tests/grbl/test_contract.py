"""The driver contract suite on the GRBL simulator."""

from __future__ import annotations

import os

from cellctl_drivers.contract import ContractCase, DriverContract
from cellctl_drivers.grbl.driver import GrblDriver, GrblOptions
from cellctl_drivers.grbl.sim import GrblSim

from .conftest import fast_sim, gcode_step

SHORT = ["G21 G90", "G1 X5 Y5 F3000", "G1 X10 Y0", "G0 Z5", "G0 X0 Y0"]
# About 40 s of motion at the test's time factor: long enough to pause, stop and e-stop.
LONG = ["G21 G90", "F600"] + [f"G1 X{10 * (i % 2)} Y{i % 7}" for i in range(80)]


class TestGrblContract(DriverContract):
    case = ContractCase(
        driver=GrblDriver,
        simulator=GrblSim,
        options=GrblOptions(),
        sim_options=fast_sim(time_factor=20.0),
        short_step=gcode_step(SHORT, "contract-short"),
        long_step=gcode_step(LONG, "contract-long"),
        # On a real controller: CELLCTL_HARDWARE=1 CELLCTL_GRBL_PORT=/dev/ttyUSB0 (it moves!).
        hardware_options=(
            GrblOptions(port=os.environ["CELLCTL_GRBL_PORT"])
            if "CELLCTL_GRBL_PORT" in os.environ
            else None
        ),
    )
