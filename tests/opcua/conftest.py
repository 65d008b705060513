"""Shared pieces of the OPC UA tests: certificates made once, driver construction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cellctl_drivers.opcua.certs import CertPair, make_certificate
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.simconfig import sim_robot_table

from cellctl.driver import DriverContext
from cellctl.model import Event


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


def make_driver(
    endpoint: str, events: list[Event] | None = None, start: str = "handshake", **overrides: Any
) -> OpcUaDriver:
    options = OpcUaOptions.model_validate(sim_robot_table(start, **overrides))
    sink = events.append if events is not None else (lambda e: None)
    return OpcUaDriver(DriverContext("robot", sink, endpoint), options)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CELLCTL_TEST_OPCUA_PASSWORD", "s3cret")
    yield "CELLCTL_TEST_OPCUA_PASSWORD"


__all__ = ["CertPair", "Certs", "make_driver"]
