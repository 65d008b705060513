"""What the Marlin and GRBL drivers share: the serial link and the simulated one.

- `SerialLink`: a driver's async port (no board reset on open; errors → LinkError).
- `PtyHost`: a pseudo-terminal with a stable path, link emulation and faults, for simulators.
- `SerialFirmware` + `SerialSimOptions`: a base for firmware simulators.
- `LinkTiming`, `FaultPlan`, `Faults`: link timing and fault injection.
- `port_problems`: what `cellctl check` says about a configured port.

See docs/serial.md.
"""

from .emulation import LatencyBuffer, LinkTiming, Wire
from .faults import FaultCounters, FaultPlan, Faults
from .firmware import SerialFirmware, SerialSimOptions
from .link import SerialLink
from .pty_host import PtyHost, Received
from .startcheck import port_problems

__all__ = [
    "FaultCounters",
    "FaultPlan",
    "Faults",
    "LatencyBuffer",
    "LinkTiming",
    "PtyHost",
    "Received",
    "SerialFirmware",
    "SerialLink",
    "SerialSimOptions",
    "Wire",
    "port_problems",
]
