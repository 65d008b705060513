"""The CNC controller is killed while connected and comes back, three times: the
supervisor reconnects the driver each time, and a program runs after each return."""

from __future__ import annotations

from pathlib import Path

from cellctl_drivers.grbl.driver import GrblOptions
from cellctl_drivers.grbl.sim import GrblSim
from support.restarts import FreshSim, kill_and_return

from cellctl.model import Step

from .conftest import fast_sim, gcode_step

PROGRAM = ["G21 G90", "G1 X5 Y5 F3000", "G1 X10 Y0", "G0 X0 Y0"]


async def test_grbl_controller_killed_three_times_comes_back_and_mills(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB-mill"
    device = FreshSim(lambda: GrblSim(fast_sim(time_factor=20.0)), link)

    def step(i: int) -> Step:
        return gcode_step(PROGRAM, "restart", job=f"job{i}")

    runner = await kill_and_return(device, "grbl", GrblOptions(port=str(link)), step)
    assert device.lives == 4 and runner.connects == 4
