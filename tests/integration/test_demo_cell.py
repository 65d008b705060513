"""The demo cell end to end: `cellctl run configs/demo.toml` as a real subprocess with
every simulated device, jobs dropped in its hot folder run to completion on them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from integration.test_daemon import NotifySocket
from support.ports import free_port

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"

CUBE_JOB = """\
id = "cube-1"

[[route]]
process = "print"
program = "parts/cube.gcode"
setup = { material = "PLA", colour = "black" }  # printer-1's (printer-2 has red)

[[route]]
process = "tend"
program = { kind = "robot", name = "tend" }
reserves = ["@previous"]

[[route]]
process = "plc-cycle"
program = { kind = "recipe", name = "7", parameters = { speed = 120.0, force = 300.0 } }
"""

CUBE_GCODE = "G28\nM104 S200\nG1 X10 Y10 F3000\nG1 X20 Y20 E1\nG1 X30 Y10 E2\nM84\n"
BRACKET_NC = "G21\nG90\nG0 X10 Y10\nG1 X20 F500\nG1 Y20\nM5\n"


def demo_config(tmp_path: Path) -> Path:
    """The demo as shipped, but for MQTT: a port where no broker listens, so the test
    touches no shared broker, and shows that jobs never wait on MQTT."""
    text = re.sub(
        r"(?ms)^\[mqtt\].*?(?=^\[(?!mqtt)|\Z)",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\nembedded = false\n\n',
        DEMO.read_text(),
    )
    assert "embedded = false" in text
    cfg = tmp_path / "demo.toml"
    cfg.write_text(text)
    return cfg


def jobs_table(cfg: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "cellctl", "jobs", "-c", str(cfg), "--local"],  # no broker here
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^(\S+)\s+(\w+)\s+\d+/\d+", out.stdout, re.M))


def test_demo_cell_runs_dropped_jobs_on_every_simulated_device(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path)
    notify = NotifySocket(tmp_path / "notify.sock")
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
    )
    try:
        ready = notify.wait_for("READY=1", bound=60)
        assert "STATUS=6 devices:" in ready
        hot = tmp_path / "state" / "hotfolder"
        (hot / "parts").mkdir(parents=True, exist_ok=True)
        (hot / "parts" / "cube.gcode").write_text(CUBE_GCODE)
        (hot / "cube.toml.tmp").write_text(CUBE_JOB)
        (hot / "cube.toml.tmp").rename(hot / "cube.toml")
        (hot / "bracket.nc").write_text(BRACKET_NC)
        deadline = time.monotonic() + 90
        table: dict[str, str] = {}
        while time.monotonic() < deadline:
            table = jobs_table(cfg)
            if len(table) == 2 and all(s in ("done", "failed") for s in table.values()):
                break
            time.sleep(0.5)
        assert table.get("cube-1") == "done", (table, (tmp_path / "daemon.log").read_text())
        [bracket] = [k for k in table if k.startswith("bracket-")]
        assert table[bracket] == "done"
        detail = subprocess.run(
            [sys.executable, "-m", "cellctl", "jobs", "-c", str(cfg), "--local", "--job", "cube-1"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        for device in ("printer-1", "robot1", "cell-plc"):
            assert f"done on {device}" in detail, detail
        assert not list((hot / "rejected").glob("*")), "nothing was rejected"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        notify.sock.close()
