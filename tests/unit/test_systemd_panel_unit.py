"""systemd/cellctl-panel.service: verified by systemd itself; runs `cellctl panel -c`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cellctl-panel.service"


def test_panel_unit_runs_the_panel_as_the_cells_user() -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/cellctl/.venv/bin/cellctl panel -c /etc/cellctl/cell.toml" in text
    assert "User=cellctl" in text and "StateDirectory=cellctl" in text
    assert "PrivateTmp=yes" in text  # the upload spool stays private


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_panel_unit_verifies(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("cellctl")
    assert exe.exists(), "cellctl console script is installed"
    copy = tmp_path / "cellctl-panel.service"
    copy.write_text(UNIT.read_text().replace("/opt/cellctl/.venv/bin/cellctl", str(exe)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
