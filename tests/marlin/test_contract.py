"""The driver contract suite on the Marlin simulator."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from cellctl_drivers.contract import ContractCase, DriverContract
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.samples import write_moves
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.model import Program, ProgramKind, Step

_DIR = Path(tempfile.mkdtemp(prefix="cellctl-marlin-contract-"))
atexit.register(shutil.rmtree, _DIR, True)
write_moves(_DIR / "short.gcode", 40, length_mm=5, feed=3000)  # ~4 simulated s
write_moves(_DIR / "long.gcode", 3000, length_mm=10, feed=600)  # ~50 min simulated


def _step(name: str) -> Step:
    return Step("contract", 0, "print", Program(ProgramKind.GCODE, path=_DIR / name))


class TestMarlinContract(DriverContract):
    case = ContractCase(
        driver=MarlinDriver,
        simulator=MarlinSim,
        options=MarlinOptions(position_interval_s=0.5, ok_timeout_s=3),
        sim_options=MarlinSimOptions(time_factor=50, emulate_link=False),
        short_step=_step("short.gcode"),
        long_step=_step("long.gcode"),
    )
