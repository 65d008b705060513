"""TLS with a client certificate and a password; ACL refusals happen at the broker."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import structlog
from mqtt_broker import Mosquitto, make_certs, password_file
from mqtt_rig import Commander, Subscriber, load, running_app, sims, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.telemetry.link import LinkSettings, MqttLink
from cellctl.telemetry.topics import Topics


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


ACL = """
user operator
topic readwrite cellctl/v1/#
topic readwrite replies/#
user reader
topic read cellctl/v1/#
topic readwrite replies/#
user cell
topic readwrite cellctl/v1/#
topic readwrite replies/#
"""


async def test_acl_refuses_a_readers_command_and_the_cell_does_nothing(tmp_path: Path) -> None:
    pw = password_file(tmp_path, {"operator": "op-pw", "reader": "rd-pw", "cell": "cell-pw"})
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    broker = Mosquitto(
        tmp_path / "broker", anonymous=False, extra=f"password_file {pw}\nacl_file {acl}\n"
    )
    broker.start()
    (tmp_path / "cellpw").write_text("cell-pw\n")
    extra = f'username = "cell"\npassword = {{ file = "{tmp_path / "cellpw"}" }}\n'
    cell = load(write_config(tmp_path / "cell.toml", broker.port, mqtt_extra=extra))
    topics = Topics(cell.name)
    op = await Subscriber(
        broker.port, [topics.everything, "replies/#"], username="operator", password="op-pw"
    ).start()
    try:
        async with running_app(cell):
            await op.online()
            reader = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
            reader.username_pw_set("reader", "rd-pw")
            acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            loop = asyncio.get_running_loop()
            reader.on_publish = lambda c, u, mid, rc, p: loop.call_soon_threadsafe(
                acked.set_result, rc
            )
            reader.connect("127.0.0.1", broker.port)
            reader.loop_start()
            try:
                reader.publish(topics.command("estop"), json.dumps({}), qos=1)
                async with asyncio.timeout(10):
                    rc = await acked
                assert getattr(rc, "is_failure", False), rc  # PUBACK: not authorized
                assert "authori" in rc.getName().lower()  # type: ignore[attr-defined]
            finally:
                reader.disconnect()
                reader.loop_stop()
            # The operator's command goes through, after the reader's would have.
            reply = await Commander(op, topics).send("pause", {"device": "d1"})
            assert reply["outcome"] == "rejected"  # idle: nothing to pause
            assert not any(s.commands for s in sims(cell))
        db = tmp_path / "state" / "cellctl.db"
        with sqlite3.connect(db) as conn:
            audit = [r[0] for r in conn.execute("SELECT command FROM command_audit")]
        assert audit == ["pause"]  # the refused estop never reached the cell
    finally:
        op.stop()
        broker.stop()
