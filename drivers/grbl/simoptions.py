"""The simulated GRBL controller's options, apart from the simulator itself.

The daemon validates a config's `[devices.<id>.sim]` table with this class
(registry entry point `cellctl.simulator_options`) and runs the simulator in a
process of its own, so it never imports the firmware model.
"""

from __future__ import annotations

from pydantic import Field

from ..serial.firmware import SerialSimOptions


class GrblSimOptions(SerialSimOptions):
    # As typed with `$I=`; reported as GRBL stores it (`mill-1` as MILL-1).
    build_info: str = ""
    rx_buffer: int = Field(128, ge=16)  # grblHAL: 1024
    planner_blocks: int = Field(15, ge=1)
    status_mask: int = Field(1, ge=0, le=3)  # `$10`: 1 = MPos (else WPos), 2 = Bf:
    line_numbers: bool = False  # build option N: `Ln:` in reports
    homing: bool = False  # `$22=1`: starts locked in alarm until `$H`/`$X`
    start_alarm: int | None = Field(None, ge=0, le=9)  # start in ALARM:N (0: lock only)
    probe_z: float = -30.0  # machine Z where the tool-length probe triggers
