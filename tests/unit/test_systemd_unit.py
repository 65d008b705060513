"""systemd/cellctl.service: verified by systemd itself, with serial ports left reachable."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cellctl.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_shape() -> None:
    text = UNIT.read_text()
    svc = unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "on-failure"
    assert "WatchdogSec" in svc and "StateDirectory" in svc
    assert svc["SupplementaryGroups"] == "dialout"
    assert "kill -HUP $MAINPID" in svc["ExecReload"]
    assert "DeviceAllow=char-ttyUSB rw" in text and "DeviceAllow=char-ttyACM rw" in text
    assert "PrivateDevices" not in text, "PrivateDevices would hide the serial ports"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's cellctl.
    exe = Path(sys.executable).with_name("cellctl")
    assert exe.exists(), "cellctl console script is installed"
    text = UNIT.read_text().replace("/opt/cellctl/.venv/bin/cellctl", str(exe))
    copy = tmp_path / "cellctl.service"
    copy.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
