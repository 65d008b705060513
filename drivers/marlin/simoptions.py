"""The simulated Marlin printer's options, apart from the simulator itself.

The daemon validates a config's `[devices.<id>.sim]` table with this class
(registry entry point `cellctl.simulator_options`) and runs the simulator in a
process of its own, so it never imports the simulator's code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..serial.firmware import SerialSimOptions


class MarlinSimOptions(SerialSimOptions):
    firmware_name: str = "Marlin 2.1.2.5 (cellctl sim)"
    machine_type: str = "cellctl SimPrinter"
    uuid: str = "cede2a2f-41a2-4748-9b12-c55c62f367ff"
    advanced_ok: bool = False  # ADVANCED_OK: off in stock Configuration_adv.h
    autoreport_temp: bool = True
    emergency_parser: bool = True
    # Does an `ok` follow `Resend:`? 2.1: always; some 2.0.x: never; 2.0.0: sometimes.
    resend_ok: Literal["always", "never", "sometimes"] = "always"
    resend_ok_p: float = Field(0.7, ge=0, le=1)  # with "sometimes"
    error_style: Literal["marlin", "octoprint"] = "marlin"
    buffer_size: int = Field(4, ge=1)  # BUFSIZE: command ring slots
    rx_buffer_size: int = Field(128, ge=0)  # RX_BUFFER_SIZE in bytes; 0: unbounded
    max_cmd_size: int = Field(96, ge=8)  # MAX_CMD_SIZE: a longer line is cut at 95 characters
    planner_size: int = Field(16, ge=1)  # BLOCK_BUFFER_SIZE
    ambient_c: float = 22.0
    hotend_rate: float = Field(4.0, gt=0)  # °C per simulated second while heating
    bed_rate: float = Field(1.0, gt=0)
    cool_rate: float = Field(0.5, gt=0)
    max_feed_mm_s: float = Field(500.0, gt=0)
    home_s: float = Field(6.0, ge=0)  # simulated seconds a G28 takes
    spurious_resend_p: float = Field(0.0, ge=0, le=1)
    # Standalone fault controls: SIGUSR1 unplugs for `unplug_s` then replugs,
    # SIGUSR2 resets the board (`cellctl sim marlin --set signals=true`).
    signals: bool = False
    unplug_s: float = Field(3.0, ge=0)
