"""TLS with a client certificate and a password (the ACL and roles: test_access.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from mqtt_broker import Mosquitto, make_certs, password_file

from cellctl.telemetry.link import LinkSettings, MqttLink


@pytest.fixture
def tls_broker(tmp_path: Path) -> tuple[Mosquitto, Path]:
    certs = make_certs(tmp_path / "certs")
    pw = password_file(tmp_path, {"cell": "right-pw"})
    b = Mosquitto(
        tmp_path / "broker",
        anonymous=False,
        extra=(
            f"password_file {pw}\ncafile {certs.ca}\ncertfile {certs.server_cert}\n"
            f"keyfile {certs.server_key}\nrequire_certificate true\n"
        ),
    )
    b.start()
    yield b, tmp_path / "certs"
    b.stop()


def settings(port: int, certs: Path, password: str) -> LinkSettings:
    return LinkSettings(
        port=port,
        client_id="tls-test",
        username="cell",
        password=password,
        ca_file=certs / "ca.crt",
        cert_file=certs / "client.crt",
        key_file=certs / "client.key",
        reconnect_initial_s=0.05,
        reconnect_max_s=0.1,
    )


async def test_tls_wrong_password_is_one_clear_error_right_one_works(
    tls_broker: tuple[Mosquitto, Path],
) -> None:
    broker, certs = tls_broker
    bad = MqttLink(settings(broker.port, certs, "wrong-pw"))
    with structlog.testing.capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(bad.run())
            async with asyncio.timeout(15):
                while bad.stats.failures < 3:
                    await asyncio.sleep(0.05)
            task.cancel()
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1, errors  # three refusals, one line
    assert "refused" in errors[0]["error"] and "username and password" in errors[0]["error"]
    assert not bad.stats.connects

    good = MqttLink(settings(broker.port, certs, "right-pw"))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(good.run())
        await good.wait_connected(15)
        await good.close()
        task.cancel()
    assert good.stats.connects == 1


async def test_the_start_check_counts_a_tls_broker_demanding_certificates_as_closed(
    tls_broker: tuple[Mosquitto, Path],
) -> None:
    """The probe brings the CA but no client certificate and no login, as an outsider."""
    from cellctl.telemetry.broker import Anonymous, probe_anonymous

    broker, certs = tls_broker
    probe = LinkSettings(port=broker.port, ca_file=certs / "ca.crt", connect_timeout_s=5.0)
    result, why = await probe_anonymous(probe)
    assert result is Anonymous.REFUSED, why
