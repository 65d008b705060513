"""In JSON mode every line on stderr is one JSON object, the libraries' lines too."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, structlog
from cellctl import logs
logs.configure("info", "json")
structlog.get_logger("cellctl").info("ours", device="plc")
logging.getLogger("pymodbus.logging").warning("theirs %s", 5)
logging.getLogger("asyncua").info("below the libraries' level")
try:
    b"".decode("ascii") + 1
except TypeError:
    logging.getLogger("asyncio").error("Fatal error: data_received() failed", exc_info=True)
"""


def test_library_lines_and_their_tracebacks_are_json_lines() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("ours", "info"),
        ("theirs 5", "warning"),
        ("Fatal error: data_received() failed", "error"),
    ]
    assert lines[0]["device"] == "plc"
    assert lines[1]["logger"] == "pymodbus.logging"
    (exception,) = lines[2]["exception"]
    assert exception["exc_type"] == "TypeError"
    assert all("timestamp" in e for e in lines)
