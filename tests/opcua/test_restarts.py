"""The robot's server is killed while connected and comes back, three times: the
driver's session dies with it, the supervisor reconnects, and a program runs after
each return. The outage outlasts the driver's own reconnect grace, so every round
goes through the supervisor."""

from __future__ import annotations

import pytest
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.sim import RobotSim
from cellctl_drivers.opcua.simconfig import sim_robot_table
from support.restarts import Restartable, kill_and_return

from cellctl.model import Program, ProgramKind, Step

from .conftest import fresh

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_opcua_robot_killed_three_times_comes_back_and_runs(robot_sim: RobotSim) -> None:
    sim = await fresh(robot_sim, time_factor=20.0)
    await sim.stop_server()  # kill_and_return starts it
    device = Restartable(sim.stop_server, sim.start_server)
    options = OpcUaOptions.model_validate(
        sim_robot_table("handshake", endpoint=sim.endpoint, reconnect_grace_s=0.2)
    )

    def step(i: int) -> Step:
        return Step(f"job{i}", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))

    try:
        runner = await kill_and_return(device, "opcua", options, step)
    finally:
        await sim.start_server()  # the next test finds it listening
    assert runner.connects == 4
