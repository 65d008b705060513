"""The driver contract suite on the simulated robot, one server for the module.

Building an asyncua address space takes a second or two on a small PC, so the
module keeps one simulator; each case starts and stops only its listener
(which is what a server restart looks like to a client) and resets the robot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import pytest
import pytest_asyncio
from cellctl_drivers.contract import ContractCase, DriverContract
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.sim import RobotSim, RobotSimOptions
from cellctl_drivers.opcua.simconfig import sim_robot_table

from cellctl.model import Program, ProgramKind, Step

from .conftest import fresh

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _Shared:
    sim: RobotSim | None = None


class SharedRobotSim:
    """Looks like a fresh simulator to the contract suite; reuses the module's server."""

    def __init__(self, options: Any = None) -> None:
        assert _Shared.sim is not None
        self._sim = _Shared.sim

    @property
    def endpoint(self) -> str:
        return self._sim.endpoint

    async def __aenter__(self) -> Self:
        self._sim.reset_robot()
        await self._sim.start_server()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._sim.stop_server()


@pytest_asyncio.fixture(scope="module", loop_scope="session", autouse=True)
async def shared_sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    await fresh(robot_sim, time_factor=4.0)
    await robot_sim.stop_server()  # each case starts it
    _Shared.sim = robot_sim
    yield robot_sim
    _Shared.sim = None
    await robot_sim.start_server()


def _step(name: str) -> Step:
    return Step("job-1", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name=name))


class TestOpcUaContractHandshake(DriverContract):
    case = ContractCase(
        driver=OpcUaDriver,
        simulator=SharedRobotSim,
        options=OpcUaOptions.model_validate(sim_robot_table("handshake", reconnect_grace_s=1.0)),
        sim_options=RobotSimOptions(),
        short_step=_step("pick"),  # 2 s at time factor 4
        long_step=_step("long"),  # 60 s at time factor 4
    )
