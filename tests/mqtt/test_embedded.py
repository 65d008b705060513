"""`embedded = true` with nothing listening: amqtt starts in-process, MQTT 3.1.1 replies work."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.client as paho
import structlog
from mqtt_broker import free_port
from mqtt_rig import load, running_app, service, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.telemetry.topics import Topics


async def test_embedded_broker_and_311_replies(tmp_path: Path) -> None:
    port = free_port()
    cell = load(write_config(tmp_path / "cell.toml", port, devices=1, mqtt_extra="embedded = true"))
    topics = Topics(cell.name)
    with structlog.testing.capture_logs() as logs:
        async with running_app(cell) as app:
            assert service(app).embedded_started
            link = service(app).link
            assert link is not None
            await link.wait_connected(15)
            assert not link.settings.mqtt5
            loop = asyncio.get_running_loop()
            got: asyncio.Queue[bytes] = asyncio.Queue()
            subscribed = asyncio.Event()
            c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
            c.on_connect = lambda cl, *a: cl.subscribe(topics.reply("amy", "pause"), 1)
            c.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
            c.on_message = lambda cl, u, m: loop.call_soon_threadsafe(got.put_nowait, m.payload)
            c.connect("127.0.0.1", port)
            c.loop_start()
            try:
                async with asyncio.timeout(15):
                    await subscribed.wait()
                    c.publish(
                        topics.command("amy", "pause"), json.dumps({"device": "d1", "id": "q1"}), 1
                    )
                    reply = json.loads(await got.get())
            finally:
                c.disconnect()
                c.loop_stop()
            assert reply["id"] == "q1" and reply["outcome"] == "rejected"  # d1 is idle
    # allow_anonymous (as in the demo) is said at start, once.
    warned = [e for e in logs if "allow_anonymous = true" in e["event"]]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning", warned


def amqtt_password_file(path: Path, users: dict[str, str]) -> Path:
    """amqtt's own format, as docs/mqtt.md says to make it: `user:<argon2 hash>`."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    hasher = PasswordHash((Argon2Hasher(),))
    path.write_text("".join(f"{u}:{hasher.hash(pw)}\n" for u, pw in users.items()))
    return path


class Client311:
    """A logged-in MQTT 3.1.1 client (amqtt speaks nothing else)."""

    def __init__(self, port: int, user: str | None, password: str | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.got: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.connack: asyncio.Future[object] = self.loop.create_future()
        self.subscribed = asyncio.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p: self.loop.call_soon_threadsafe(
            lambda: self.connack.done() or self.connack.set_result(rc)
        )
        self.c.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.c.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(self.got.put_nowait, m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    async def accepted(self) -> bool:
        async with asyncio.timeout(15):
            rc = await self.connack
        return not getattr(rc, "is_failure", True)

    async def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.c.subscribe(topic, 1)
        async with asyncio.timeout(15):
            await self.subscribed.wait()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_embedded_broker_enforces_users_and_publish_acls(tmp_path: Path) -> None:
    """The pinned amqtt with a password file and the ACL made from [access]: no anonymous
    client, nobody publishes as another user or beyond their roles, nobody forges a reply."""
    port = free_port()
    pw = {"cell": "cell-pw", "alice": "a-pw", "bob": "b-pw", "mallory": "m-pw"}
    amqtt_password_file(tmp_path / "embedded.passwd", pw)
    (tmp_path / "cellpw").write_text("cell-pw\n")
    extra = (
        'embedded = true\nusername = "cell"\n'
        f'password = {{ file = "{tmp_path / "cellpw"}" }}\n'
        'embedded_password_file = "embedded.passwd"\n'
    )
    access = '[access.users]\nalice = ["operator"]\nbob = ["viewer"]\n'
    cell = load(write_config(tmp_path / "cell.toml", port, 1, mqtt_extra=extra, access=access))
    topics = Topics(cell.name)
    async with running_app(cell) as app:
        assert service(app).embedded_started
        assert not await Client311(port, None).accepted()  # anonymous
        assert not await Client311(port, "alice", "wrong").accepted()
        clients = {u: Client311(port, u, pw[u]) for u in ("alice", "bob", "mallory")}
        try:
            for u, c in clients.items():
                assert await c.accepted(), u
                await c.subscribe(f"{topics.replies(u)}/#")
            alice, bob, mallory = clients["alice"], clients["bob"], clients["mallory"]
            forged = json.dumps({"outcome": "accepted", "id": "b1"})
            mallory.c.publish(topics.command("alice", "stop"), '{"device": "d1"}', 1)
            mallory.c.publish(topics.reply("bob", "jobs"), forged, 1)
            alice.c.publish(topics.reply("bob", "jobs"), forged, 1)
            bob.c.publish(topics.command("bob", "cancel"), '{"job": "j", "id": "b2"}', 1)
            # Then a command each may send: their replies are the first thing they get.
            alice.c.publish(topics.command("alice", "pause"), '{"device": "d1", "id": "a"}', 1)
            bob.c.publish(topics.command("bob", "jobs"), '{"id": "b3"}', 1)
            async with asyncio.timeout(15):
                a, b = await alice.got.get(), await bob.got.get()
            assert a.topic == topics.reply("alice", "pause")
            assert json.loads(a.payload)["reason"] == "device 'd1' is idle; pause needs execute"
            assert b.topic == topics.reply("bob", "jobs")
            assert json.loads(b.payload)["id"] == "b3"  # not the forgery, not a cancel reply
            assert mallory.got.empty()
        finally:
            for c in clients.values():
                c.close()
        commands = service(app).commands
        assert commands is not None and commands.handled == 2  # mallory's and bob's dropped


async def test_the_cli_logging_in_falls_back_to_311_at_once(tmp_path: Path) -> None:
    """amqtt leaves an MQTT 5 CONNECT with a user name unanswered: the CLI, told by the
    config that the broker may be the embedded one, tries 3.1.1 after a second, not after
    its whole timeout, and its commands are answered."""
    import argparse
    import dataclasses
    import time

    from cellctl.cli.mqtt import EMBEDDED_ANSWER_S, Remote, target_from

    port = free_port()
    cfg = write_config(tmp_path / "cell.toml", port, devices=1, mqtt_extra="embedded = true")
    cell = load(cfg)
    target = target_from(argparse.Namespace(host=None, port=None, cell=None), cell.config)
    assert target.embedded and target.mqtt5
    target = dataclasses.replace(target, username="amy", password="pw")
    async with running_app(cell):
        t0 = time.monotonic()
        remote = await asyncio.to_thread(Remote.connect, target, 10.0)
        took = time.monotonic() - t0
        try:
            assert not remote.mqtt5
            assert EMBEDDED_ANSWER_S <= took < EMBEDDED_ANSWER_S + 3, took
            reply = await asyncio.to_thread(remote.command, "devices", {})
            assert reply["outcome"] == "accepted", reply
        finally:
            remote.close()
