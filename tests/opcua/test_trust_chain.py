"""Server certificates signed by a trusted CA: accepted when valid, refused otherwise.

The trust list pins certificates by fingerprint and, for the CA certificates
in it, accepts what they signed directly (drivers/opcua/certs.py). The unit
tests check the decision on made-up certificates; the last one connects to
the simulated robot presenting a CA-signed certificate, with only the CA in
the client's trust list.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.certs import CertPair, Trust, load_certificate, make_ca, make_certificate
from cellctl_drivers.opcua.driver import AccessDenied
from cellctl_drivers.opcua.sim import RobotSim

from cellctl.model import DeviceState

from .conftest import PASSWORD_ENV, Certs, make_driver, secure_table, secured


class Chain:
    def __init__(self, root: Path) -> None:
        self.ca = make_ca(root / "ca", "plant-ca")
        self.other_ca = make_ca(root / "other", "other-ca")
        self.server = make_certificate(
            root / "srv", "robot-ca-signed", "urn:test:robot", server=True, issuer=self.ca
        )
        self.foreign = make_certificate(
            root / "srv", "foreign", "urn:test:foreign", server=True, issuer=self.other_ca
        )
        long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
        self.expired = make_certificate(
            root / "srv",
            "expired",
            "urn:test:old",
            server=True,
            issuer=self.ca,
            days=30,
            not_before=long_ago,
        )
        self.self_signed = make_certificate(root / "srv", "self", "urn:test:self", server=True)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return Chain(tmp_path_factory.mktemp("opcua-chain"))


def trust(*pairs: CertPair) -> Trust:
    return Trust.of([load_certificate(p.certificate) for p in pairs])


def test_a_certificate_signed_by_a_trusted_ca_is_accepted(chain: Chain) -> None:
    assert trust(chain.ca).refusal(load_certificate(chain.server.certificate)) is None


def test_another_ca_or_a_self_signed_certificate_is_refused(chain: Chain) -> None:
    t = trust(chain.ca)
    for pair in (chain.foreign, chain.self_signed, chain.other_ca):
        why = t.refusal(load_certificate(pair.certificate))
        assert why is not None and "not in trusted_server_certs nor signed by a CA" in why


def test_an_expired_certificate_is_refused_even_from_the_trusted_ca(chain: Chain) -> None:
    why = trust(chain.ca).refusal(load_certificate(chain.expired.certificate))
    assert why is not None and "expired on" in why


def test_a_pinned_certificate_is_accepted_and_a_pinned_leaf_is_no_ca(chain: Chain) -> None:
    assert trust(chain.self_signed).refusal(load_certificate(chain.self_signed.certificate)) is None
    # Pinning a server certificate does not make what it "signed" trusted.
    assert trust(chain.server).authorities == []


def test_a_forged_issuer_name_is_refused(chain: Chain, tmp_path: Path) -> None:
    # Same subject name as the trusted CA, different key: the signature decides.
    impostor = make_ca(tmp_path / "impostor", "plant-ca")
    forged = make_certificate(tmp_path, "forged", "urn:f", server=True, issuer=impostor)
    assert trust(chain.ca).refusal(load_certificate(forged.certificate)) is not None


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ca_signed_sim(robot_sim: RobotSim, certs: Certs, chain: Chain) -> AsyncIterator[RobotSim]:
    async with secured(robot_sim, chain.server, certs) as sim:
        yield sim


def _table(certs: Certs, trusted: CertPair) -> dict[str, object]:
    return secure_table(certs, trusted_server_certs=[str(trusted.certificate)])


@pytest.mark.asyncio(loop_scope="session")
async def test_connects_to_a_server_whose_ca_is_trusted(
    ca_signed_sim: RobotSim, certs: Certs, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    driver = make_driver(ca_signed_sim.endpoint, **_table(certs, chain.ca))
    async with asyncio.timeout(20):
        async with driver:
            assert driver.status().state == DeviceState.IDLE
    refused = make_driver(ca_signed_sim.endpoint, **_table(certs, chain.other_ca))
    with pytest.raises(AccessDenied, match="nor signed by a CA"):
        async with asyncio.timeout(20):
            await refused.__aenter__()
    await refused.__aexit__(None, None, None)
