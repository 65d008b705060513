"""Starting the real daemon as a subprocess, with the in-test drivers (support/launch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LAUNCH = Path(__file__).resolve().parent / "launch.py"


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The daemon on `config`, its log lines (stderr) in `log`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(LAUNCH), str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
