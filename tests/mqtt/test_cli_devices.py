"""The device commands of the command line against the demo cell, as an operator runs them:
`cellctl devices`, an emergency stop, `cellctl reset --all`, and then a job that runs.

The daemon is the real App (every device of configs/demo.toml simulated on its real
protocol) on a real Mosquitto; the CLI is `python -m cellctl` in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import Mosquitto
from mqtt_rig import Subscriber

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.telemetry.topics import Topics

DEMO = Path(__file__).parents[2] / "configs" / "demo.toml"
BOUND = 60.0


ROBOT_SIM = "sim = { time_factor = 1.0, heartbeat_timeout_s = 3.0 }"


def demo_on(tmp_path: Path, port: int, tend_s: float | None = None) -> Path:
    """The demo on this test's broker; `tend_s`: how long the robot's `tend` program runs."""
    text = re.sub(
        r"(?ms)^\[mqtt\].*?(?=^\[(?!mqtt)|\Z)",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nembedded = false\n\n',
        DEMO.read_text(),
    )
    text = text.replace('hotfolder = "state/hotfolder"', 'hotfolder = "hot"')
    if tend_s is not None:
        assert ROBOT_SIM in text, "configs/demo.toml's robot simulator line changed"
        text = text.replace(ROBOT_SIM, ROBOT_SIM[:-2] + f", programs = {{ 3 = {tend_s} }} }}")
    cfg = tmp_path / "demo.toml"
    cfg.write_text(text)
    return cfg


def cellctl(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "cellctl", *argv],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await asyncio.to_thread(cellctl, *argv, env=env)


async def until(pred: Any, what: str, within_s: float = BOUND) -> None:
    async with asyncio.timeout(within_s):
        while not await pred():
            await asyncio.sleep(0.3)


@pytest.mark.timeout(300)  # the whole tour: four devices, two jobs, some 30 CLI calls
async def test_estop_then_reset_all_then_a_job_runs(tmp_path: Path, broker: Mosquitto) -> None:
    # Long enough that the program still runs when the estop CLI call (a fresh interpreter,
    # seconds on a loaded machine) arrives; the default 8 s was seen to end first.
    cfg = demo_on(tmp_path, broker.port, tend_s=20.0)
    cell = config_mod.load(cfg)
    sub = await Subscriber(broker.port, [Topics(cell.name).everything]).start()
    app = App(cell)
    c = str(cfg)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            await sub.online()

            async def states() -> dict[str, str]:
                rc, out, err = await run("devices", "-c", c, "--json")
                assert rc == 0, err
                return {d["id"]: d["state"] for d in json.loads(out)}

            async def all_idle() -> bool:
                return set((await states()).values()) == {"idle"}

            await until(all_idle, "every demo device idle")
            rc, out, err = await run("devices", "-c", c)
            assert rc == 0 and err == "", err
            lines = out.splitlines()
            assert lines[0].split() == ["DEVICE", "DRIVER", "STATE", "SERVICE", "SETUP", "STEP"]
            printer = next(x for x in lines if x.startswith("printer-1 "))
            assert "marlin" in printer and "material=PLA, nozzle=0.4" in printer

            # A robot program running when the emergency stop comes.
            tend = tmp_path / "tend.toml"
            tend.write_text(
                'id = "tend-1"\n[[route]]\nprocess = "tend"\n'
                'program = { kind = "robot", name = "tend" }\n'
            )
            rc, out, err = await run("submit", "-c", c, str(tend))
            assert rc == 0, err

            async def robot_runs() -> bool:
                _, out, _ = await run("devices", "-c", c, "--json")
                return any(d["id"] == "robot1" and d["step"] == "tend-1/0" for d in json.loads(out))

            await until(robot_runs, "the robot running tend-1")
            rc, out, err = await run("estop", "-c", c, "--reason", "tour")
            assert rc == 0, err
            assert out.startswith("emergency stop: stopped ") and "cellctl reset --all" in out
            assert out.count("\n") == 1  # one line, not the JSON reply

            async def all_stopped() -> bool:
                return all(s in ("aborted", "stopped") for s in (await states()).values())

            await until(all_stopped, "every device aborted or stopped after the estop")
            # A job submitted now waits: nothing is idle.
            part = tmp_path / "cube.gcode"
            part.write_text("G28\nG1 X10 Y10 F3000\nG1 X20 Y20 E1\n")
            rc, out, err = await run("pause", "-c", c, "printer-1")
            assert rc == 1 and err.count("\n") == 1 and "pause needs" in err, err

            async def held() -> bool:
                _, out, _ = await run("jobs", "-c", c, "--job", "tend-1", "--json")
                return json.loads(out)[0]["steps"][0]["state"] == "held"

            await until(held, "the robot's step held")
            rc, out, err = await run("jobs", "-c", c, "--job", "tend-1")
            assert rc == 0, err
            # The hold names its cause and the answers that apply (no resume from a line).
            assert "program 3 stopped by an emergency stop" in out, out
            assert (
                "held by emergency stop: reset the device first (cellctl reset --all), "
                "then cellctl answer tend-1 0 retry|fail|done"
            ) in out, out

            rc, out, err = await run("reset", "-c", c, "--all")
            assert rc == 0, (out, err)
            said = {ln.split(":")[0]: ln for ln in out.splitlines()}
            assert set(said) == set(cell.devices), out
            assert "-> idle (M999" in said["printer-1"], out
            assert "-> idle (soft reset" in said["mill-1"], out
            assert await all_idle()

            rc, out, err = await run("answer", "-c", c, "tend-1", "0", "retry")
            assert rc == 0, err
            rc, out, err = await run("submit", "-c", c, str(part), "--json")
            assert rc == 0, err
            job = json.loads(out)["id"]

            async def done() -> bool:
                rc, out, _ = await run("jobs", "-c", c, "--json", "--job", job)
                return rc == 0 and json.loads(out)[0]["state"] == "done"

            await until(done, "the job after the recovery done")
            job = "tend-1"
            await until(done, "the robot's retried step done")
            rc, out, err = await run("reset", "-c", c, "--all", "--json")
            assert rc == 0 and {e["action"] for e in json.loads(out)} == {"none"}, out
            app.request_stop()
            async with asyncio.timeout(30):
                await task
    finally:
        sub.stop()


@pytest.mark.timeout(200)
async def test_pause_resume_stop_a_print_from_the_command_line(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = demo_on(tmp_path, broker.port)
    cell = config_mod.load(cfg)
    sub = await Subscriber(broker.port, [Topics(cell.name).everything]).start()
    app = App(cell)
    c = str(cfg)

    async def printer() -> dict[str, Any]:
        rc, out, err = await run("devices", "-c", c, "--json")
        assert rc == 0, err
        return next(d for d in json.loads(out) if d["id"] == "printer-1")

    async def printer_is(state: str) -> None:
        async def check() -> bool:
            return (await printer())["state"] == state

        await until(check, f"printer-1 {state}")

    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            await sub.online()
            await printer_is("idle")
            rc, out, err = await run("status", "-c", c, "--json")
            assert rc == 0, err
            seen = json.loads(out)
            assert seen["state"] == "online" and seen["devices"]["printer-1"]["state"] == "idle"
            # Many short moves: a pause only waits for the few lines in flight.
            moves = "".join(f"G1 X{10 + i % 2 * 40} F1200\n" for i in range(600))
            part = tmp_path / "long.gcode"
            part.write_text("G28\n" + moves)
            # On printer-1: the demo has three printers and a bare file would fit any.
            spec = tmp_path / "long.toml"
            spec.write_text(
                'id = "long-1"\n[[route]]\nprocess = "print"\nprogram = "long.gcode"\n'
                'device = "printer-1"\n'
            )
            rc, out, err = await run("submit", "-c", c, str(spec), "--json")
            assert rc == 0, err
            job = json.loads(out)["id"]
            await printer_is("execute")
            assert (await printer())["step"] == f"{job}/0"

            rc, out, err = await run("pause", "-c", c, "printer-1")
            assert (rc, err) == (0, ""), err
            assert out.startswith("printer-1: pause done, now "), out
            await printer_is("held")
            rc, out, err = await run("resume", "-c", c, "printer-1", "--json")
            assert rc == 0 and json.loads(out)["device"] == "printer-1", err
            await printer_is("execute")
            rc, out, err = await run("stop", "-c", c, "printer-1")
            assert rc == 0 and out.startswith("printer-1: stop done"), err
            await printer_is("idle")

            async def held() -> bool:
                _, out, _ = await run("jobs", "-c", c, "--job", job, "--json")
                return json.loads(out)[0]["steps"][0]["state"] == "held"

            await until(held, "the stopped step held")
            rc, out, err = await run("jobs", "-c", c, "--job", job)
            assert f"held by operator stop: cellctl answer {job} 0 retry|resume|fail|done" in out
            rc, out, err = await run("answer", "-c", c, job, "0", "fail")
            assert rc == 0, err
            app.request_stop()
            async with asyncio.timeout(30):
                await task
    finally:
        sub.stop()
