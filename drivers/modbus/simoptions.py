"""The simulated PLC's options, apart from the simulator itself.

The daemon validates a config's `[devices.<id>.sim]` table with this class
(registry entry point `cellctl.simulator_options`) and runs the simulator in a
process of its own. The simulator needs pymodbus's server, whose package also
loads its HTTP simulator and with it aiohttp when that is installed (8 MiB):
the daemon imports none of it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymodbus.constants import ExcCodes

from cellctl.driver import SimOptions

from .options import Table


class InjectedException(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    table: Table
    address: int = Field(ge=0, le=65535)
    code: int = Field(default=int(ExcCodes.DEVICE_BUSY), ge=1, le=255)


class PlcSimOptions(SimOptions):
    # "rtu": Modbus RTU on a pseudo-terminal (8N1 or 8N2: a pseudo-terminal refuses parity).
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port
    unit_id: int = Field(default=1, ge=0, le=255)  # 0: answer every unit id
    cycle_time_s: float = Field(default=2.0, gt=0)  # PLC seconds
    conveyor_speed: float = 120.0  # mm/s until the host writes one
    watchdog_s: float = Field(default=3.0, ge=0)  # real seconds; 0: no watchdog
    part_present: bool = True
    model: int = Field(default=1515, ge=0, le=65535)  # what input 40 reports
    # Fault injection (all also changeable at run time on the object):
    slow_s: float = Field(default=0.0, ge=0)  # delay before every answer
    exceptions: tuple[InjectedException, ...] = ()
    drop_every: int = Field(default=0, ge=0)  # drop all connections every N requests
    no_ack: bool = False  # never acknowledge a request
    error_code: int = Field(default=0, ge=0, le=65535)  # end every cycle with this error
    scratch: tuple[tuple[int, int], ...] = ((1000, 200),)  # free holding ranges
    # True: reading an unmapped address answers Illegal Data Address (many PLCs do);
    # False: it reads 0, as a PLC with one flat memory does. Writes there are refused.
    strict_map: bool = True
