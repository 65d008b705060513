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


SECRET_SCRIPT = """
import logging, structlog
from cellctl import logs
from cellctl.telemetry.link import LinkSettings
logs.configure("info", FORMAT)
SECRET = "hunter2-" + "e3b0c442"  # built here: the literal is in no frame's source line

def connect(settings):
    password = settings.password
    gcode = "G1 X1 ; " + SECRET
    raise ConnectionError(f"refused for user {settings.username}")

settings = LinkSettings(username="cell", password=SECRET)
try:
    connect(settings)
except ConnectionError as exc:
    structlog.get_logger("cellctl.mqtt").error("connect failed", exc_info=exc, settings=settings)
    logging.getLogger("asyncua").error("theirs", exc_info=True)
print(repr(settings))
"""


def test_a_logged_exception_carries_no_secret_from_its_frames() -> None:
    secret = "hunter2-e3b0c442"
    for fmt in ("json", "console"):
        script = SECRET_SCRIPT.replace("FORMAT", repr(fmt))
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
        )
        logged = out.stdout + out.stderr
        # The traceback is there (frames, the message) …
        assert "connect" in logged and "refused for user cell" in logged, logged
        assert logged.count("ConnectionError") >= 2, logged
        # … the password is not: neither from the frames' locals nor from a repr.
        assert secret not in logged, f"{fmt}: {logged}"
