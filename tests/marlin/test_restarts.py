"""The printer is killed while connected and comes back, three times: the supervisor
reconnects the driver each time, and a print runs to its end after each return."""

from __future__ import annotations

from pathlib import Path

from cellctl_drivers.marlin.driver import MarlinOptions
from cellctl_drivers.marlin.samples import write_moves
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions
from support.restarts import FreshSim, kill_and_return

from cellctl.model import Program, ProgramKind, Step


async def test_marlin_printer_killed_three_times_comes_back_and_prints(tmp_path: Path) -> None:
    program = tmp_path / "short.gcode"
    write_moves(program, 20, length_mm=5, feed=3000)
    link = tmp_path / "ttyACM-printer"
    device = FreshSim(lambda: MarlinSim(MarlinSimOptions(time_factor=50, emulate_link=False)), link)

    def step(i: int) -> Step:
        return Step(f"job{i}", 0, "print", Program(ProgramKind.GCODE, path=program))

    options = MarlinOptions(port=str(link), position_interval_s=0, ok_timeout_s=3)
    runner = await kill_and_return(device, "marlin", options, step)
    assert device.lives == 4 and runner.connects == 4
