"""The simulated robot's options, apart from the simulator (an asyncua server) itself.

The daemon validates a config's `[devices.<id>.sim]` table with this class
(registry entry point `cellctl.simulator_options`) and runs the simulator in a
process of its own, so it never imports the server's address space code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cellctl.driver import SimOptions

IntType = Literal["SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64"]


class RobotSimOptions(SimOptions):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port
    namespace_uri: str = "urn:cellctl:sim:robot"
    # Which endpoints the server offers. "none" only NoSecurity; the others only
    # Basic256Sha256 with that mode.
    security: Literal["none", "sign", "sign_and_encrypt"] = "none"
    certificate: Path | None = None  # server certificate; made in a temp dir if missing
    private_key: Path | None = None
    trusted_clients: tuple[Path, ...] = ()  # files/dirs; when set, other client certs are refused
    # user → password; when set, anonymous sessions are refused. Kept out of repr (logs).
    users: dict[str, str] = Field(default_factory=dict, repr=False)
    programs: dict[int, float] = Field(
        default_factory=lambda: {1: 2.0, 2: 4.0, 3: 8.0, 10: 60.0, 99: 2.0}
    )
    failing_programs: dict[int, int] = Field(default_factory=lambda: {99: 42})
    heartbeat_timeout_s: float = Field(default=3.0, ge=0)  # 0: no watchdog
    tick_s: float = Field(default=0.02, gt=0)
    bulk_tags: int = Field(default=0, ge=0)
    bulk_rate_hz: float = Field(default=10.0, gt=0)
    slow_s: float = Field(default=0.0, ge=0)
    fail_start_status: str = ""  # e.g. "BadResourceUnavailable"
    heartbeat_type: IntType | Literal["Boolean"] = "Int32"
    program_number_type: IntType = "Int32"
    float_type: Literal["Double", "Float"] = "Double"
