"""The maintenance command: privileged lines reach an idle Marlin/GRBL device, audited;
refused without the permission, on a busy device, and for lines that break the link.

The daemon runs for real against a real broker; the printer and the mill are the
simulators on real pseudo-terminals (backend "real", the simulator's port), so the
test can look at what the firmware actually ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from cellctl_drivers.grbl.sim import GrblSim, GrblSimOptions
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions
from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app

from cellctl.telemetry.topics import Topics


def cell_config(path: Path, port: int, printer: str, mill: str) -> Path:
    path.write_text(f"""
[cell]
name = "m1"
state_dir = "state"

[supervisor]
backoff_initial_s = 0.1
backoff_max_s = 1.0

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_initial_s = 0.1
keepalive_s = 5

[devices.printer]
driver = "marlin"
port = "{printer}"
processes = ["print"]
position_interval_s = 0

[devices.mill]
driver = "grbl"
port = "{mill}"
processes = ["mill"]

[access]
allow_anonymous = true
[access.users]
tech = ["maintenance"]
op = ["operator"]
""")
    return path


async def cli(user: str, *argv: str) -> tuple[int, str, str]:
    env = {**os.environ, "CELLCTL_MQTT_USERNAME": user}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cellctl", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
        rows = conn.execute(
            "SELECT ts, command, origin, payload, outcome, reason FROM command_audit"
            " WHERE command = 'maintain' ORDER BY id"
        ).fetchall()
    return [
        {"ts": ts, "origin": json.loads(o), "payload": json.loads(p), "outcome": out, "reason": r}
        for ts, _, o, p, out, r in rows
    ]


async def test_maintenance_lines_reach_the_devices_only_with_the_role(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        MarlinSim(MarlinSimOptions(time_factor=20)) as printer,
        GrblSim(GrblSimOptions(emulate_link=False, time_factor=20.0)) as mill,
    ):
        cell = load(
            cell_config(tmp_path / "cell.toml", broker.port, printer.endpoint, mill.endpoint)
        )
        topics = Topics(cell.name)
        sub = await Subscriber(broker.port, [topics.everything]).start()
        tech, op, anyone = (Commander(sub, topics, u) for u in ("tech", "op", "tester"))
        calibrate = {"device": "printer", "lines": ["M92 E415", "M500"], "reason": "e-steps"}
        try:
            async with running_app(cell) as app:
                await sub.online()
                # Without the permission: refused, nothing reaches the printer. On this open
                # broker every other command is open to everybody; maintain is not.
                for who in (op, anyone):
                    r = await who.send("maintain", calibrate)
                    assert (
                        r["outcome"] == "rejected" and "lacks permission 'maintain'" in r["reason"]
                    )
                assert "M92 E415" not in printer.executed and "M500" not in printer.executed

                r = await tech.send("maintain", calibrate)
                assert r["outcome"] == "accepted", r
                assert r["result"]["lines"] == [
                    {"line": "M92 E415", "answer": "ok"},
                    {"line": "M500", "answer": "ok"},
                ]
                ran = printer.executed
                assert ran.index("M92 E415") < ran.index("M500")

                # The command line, as the technician runs it (their own broker login).
                cfg = str(tmp_path / "cell.toml")
                rc, out, err = await cli(
                    "tech",
                    "maintain",
                    "-c",
                    cfg,
                    "printer",
                    "M92 E400",
                    "--reason",
                    "e-steps again",
                )
                assert rc == 0 and out == "printer: M92 E400 -> ok\n", err
                assert "M92 E400" in printer.executed
                rc, out, err = await cli(
                    "op", "maintain", "-c", cfg, "printer", "M500", "--reason", "x"
                )
                assert rc == 1 and out == "" and err.count("\n") == 1, err
                assert "lacks permission 'maintain'" in err

                # GRBL: a setting the job policy refuses goes through here, and is stored.
                assert mill.firmware.settings[130] != "612.000"
                r = await tech.send(
                    "maintain", {"device": "mill", "lines": ["$130=612"], "reason": "longer X rail"}
                )
                assert r["outcome"] == "accepted", r
                assert mill.firmware.settings[130] == "612.000"
                driver = app.supervisor.runners["mill"].driver
                assert driver is not None and driver.settings[130] == "612.000"  # type: ignore[attr-defined]

                # Lines that would break the link are refused before anything is sent.
                for device, line in (("printer", "M110 N500"), ("mill", "$C"), ("mill", "G0 X1 !")):
                    r = await tech.send(
                        "maintain", {"device": device, "lines": [line], "reason": "x"}
                    )
                    assert r["outcome"] == "rejected" and "line 1" in r["reason"], r
                assert "M110 N500" not in printer.executed
                # A refused line stops the rest, and the reason says what ran.
                r = await tech.send(
                    "maintain",
                    {"device": "mill", "lines": ["$131=300", "$999=1", "$132=50"], "reason": "x"},
                )
                assert r["outcome"] == "rejected" and "line 2" in r["reason"], r
                assert "lines 1-1 ran" in r["reason"]
                assert mill.firmware.settings[131] == "300.000"
                assert mill.firmware.settings[132] != "50.000"
                # No reason, a control byte: malformed, refused with a reply.
                for body in (
                    {"device": "printer", "lines": ["M500"]},
                    {"device": "printer", "lines": ["M500\nM502"], "reason": "x"},
                ):
                    r = await tech.send("maintain", body)
                    assert r["outcome"] == "rejected" and r["reason"].startswith("invalid command")
        finally:
            sub.stop()
    rows = audit(tmp_path)
    accepted = [r for r in rows if r["outcome"] == "accepted"]
    assert [r["origin"]["user"] for r in accepted] == ["tech", "tech", "tech"]
    assert accepted[0]["payload"]["reason"] == "e-steps"
    assert accepted[0]["reason"] == "M92 E415 -> ok; M500 -> ok"
    assert accepted[1]["payload"] == {
        "device": "printer",
        "lines": ["M92 E400"],
        "reason": "e-steps again",
    }
    assert accepted[2]["payload"]["lines"] == ["$130=612"]
    denied = [r for r in rows if "lacks permission" in r["reason"]]
    assert [r["origin"]["user"] for r in denied] == ["op", "tester", "op"]
    assert all(r["ts"] > 0 for r in rows)


async def test_maintenance_is_refused_while_a_step_runs(tmp_path: Path, broker: Mosquitto) -> None:
    async with (
        MarlinSim(MarlinSimOptions(time_factor=1)) as printer,
        GrblSim(GrblSimOptions(emulate_link=False, time_factor=20.0)) as mill,
    ):
        cell = load(
            cell_config(tmp_path / "cell.toml", broker.port, printer.endpoint, mill.endpoint)
        )
        topics = Topics(cell.name)
        sub = await Subscriber(broker.port, [topics.everything]).start()
        tech = Commander(sub, topics, "tech")
        try:
            async with running_app(cell) as app:
                await sub.online()
                job = {"job": "long", "steps": [{"process": "print", "gcode": "G4 S60\nG4 S60\n"}]}
                r = await tech.send("submit", job)  # `*`-open on this broker: tech may submit
                assert r["outcome"] == "accepted", r
                runner = app.supervisor.runners["printer"]
                await sub.wait_for(lambda: runner.busy, "the step running")
                r = await tech.send(
                    "maintain", {"device": "printer", "lines": ["M500"], "reason": "x"}
                )
                assert r["outcome"] == "rejected", r
                assert "maintenance needs it idle" in r["reason"]
                assert "M500" not in printer.executed
                r = await tech.send("cancel", {"job": "long"})
                assert r["outcome"] == "accepted", r
        finally:
            sub.stop()
