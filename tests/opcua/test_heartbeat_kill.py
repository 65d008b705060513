"""A killed daemon stops beating: the simulated robot's watchdog stops the arm.

The robot's simulator runs here, in the test; the daemon is a real `cellctl run`
process connected to it as to real hardware, and it is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.robot import RobotState
from cellctl_drivers.opcua.sim import RobotSim

from .conftest import fresh

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = """
[cell]
name = "hb-test"

[logging]
level = "info"
format = "json"

[devices.arm]
driver = "opcua"
endpoint = "{endpoint}"
namespace_uri = "urn:cellctl:sim:robot"
tags.state = {{ node = "s=Robot.State", type = "string" }}
tags.heartbeat = {{ node = "s=Robot.Heartbeat", type = "int", read = "none", writable = true }}
state = {{ tag = "state", values = {{ IDLE = "idle", RUNNING = "execute", STOPPED = "stopped" }} }}
heartbeat = {{ tag = "heartbeat", interval_s = 0.2 }}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    # Beats every 0.2 s against a 4 s watchdog: a wide margin on a loaded machine.
    sim = await fresh(robot_sim, time_factor=1.0, heartbeat_timeout_s=4.0)
    yield sim
    sim.robot.heartbeat_timeout_s = 0.0


async def _until(pred: object, bound: float, what: str) -> None:
    assert callable(pred)
    try:
        async with asyncio.timeout(bound):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def test_killed_daemon_stops_the_robot(sim: RobotSim, tmp_path: Path) -> None:
    config = tmp_path / "cell.toml"
    config.write_text(CONFIG.format(endpoint=sim.endpoint))
    log = (tmp_path / "daemon.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cellctl",
        "run",
        str(config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        robot = sim.robot
        await _until(
            lambda: robot._heartbeat_changed_at is not None, 30, "the daemon's first heartbeats"
        )
        assert robot.start(10, "test") == 0  # a long program runs on the arm
        await asyncio.sleep(1.0)
        assert robot.state == RobotState.RUNNING
        assert robot.watchdog_trips == 0, "the watchdog stays quiet while the daemon lives"
        os.kill(proc.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await proc.wait()
        await _until(lambda: robot.state == RobotState.STOPPED, 15, "the arm to stop")
        assert robot.alarm == "heartbeat lost"
        assert robot.watchdog_trips == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            async with asyncio.timeout(10):
                await proc.wait()
        log.close()
