"""Shared pieces of the OPC UA tests: certificates made once, driver construction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.certs import CertPair, make_certificate
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.sim import RobotSim, RobotSimOptions
from cellctl_drivers.opcua.simconfig import sim_robot_table

from cellctl.driver import DriverContext
from cellctl.model import Event

PASSWORD_ENV = "CELLCTL_TEST_OPCUA_PASSWORD"


class Certs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = make_certificate(
            root / "server", "robot-server", "urn:test:robot", server=True
        )
        self.client = make_certificate(root / "client", "cellctl", "urn:test:cellctl", server=False)
        # Certificates nobody trusts: a foreign server, a foreign client.
        self.rogue_server = make_certificate(
            root / "rogue", "rogue-server", "urn:rogue", server=True
        )
        self.rogue_client = make_certificate(
            root / "rogue", "rogue-client", "urn:rogue:c", server=False
        )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("opcua-certs"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def robot_sim() -> AsyncIterator[RobotSim]:
    """One plain simulator for the whole area: building an asyncua address space
    takes seconds on a small PC. Tests take it through `fresh()`."""
    async with RobotSim(RobotSimOptions(heartbeat_timeout_s=0)) as sim:
        yield sim


async def fresh(
    sim: RobotSim, time_factor: float = 4.0, heartbeat_timeout_s: float = 0.0
) -> RobotSim:
    """A freshly reset robot with a running listener and the given timing."""
    await sim.start_server()
    sim.reset_robot()
    sim.slow_s = 0.0
    sim.fail_start_status = ""
    sim.robot.time_factor = time_factor
    sim.robot.heartbeat_timeout_s = heartbeat_timeout_s
    return sim


def make_driver(
    endpoint: str, events: list[Event] | None = None, start: str = "handshake", **overrides: Any
) -> OpcUaDriver:
    options = OpcUaOptions.model_validate(sim_robot_table(start, **overrides))
    sink = events.append if events is not None else (lambda e: None)
    return OpcUaDriver(DriverContext("robot", sink, endpoint), options)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    yield PASSWORD_ENV


__all__ = ["CertPair", "Certs", "fresh", "make_driver"]


@contextlib.asynccontextmanager
async def secured(sim: RobotSim, server: CertPair, certs: Certs) -> AsyncIterator[RobotSim]:
    """The area's simulator, its listener restarted with SignAndEncrypt, `server` as its
    certificate, our client certificate trusted and one user (operator / s3cret)."""
    await fresh(sim, time_factor=4.0)
    await sim.set_security(
        "sign_and_encrypt",
        certificate=server.certificate,
        private_key=server.private_key,
        trusted_clients=(certs.client.certificate,),
        users={"operator": "s3cret"},
    )
    try:
        yield sim
    finally:
        await sim.set_security("none")


def secure_table(certs: Certs, **over: Any) -> dict[str, Any]:
    """Driver options for `secured`: our client certificate, the user's password from
    PASSWORD_ENV, and the server's certificate trusted unless `over` says otherwise."""
    table: dict[str, Any] = {
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "certificate": str(certs.client.certificate),
        "private_key": str(certs.client.private_key),
        "trusted_server_certs": [str(certs.server.certificate)],
        "username": "operator",
        "password": {"env": PASSWORD_ENV},
    }
    table.update(over)
    return table
