"""Who may command the cell, against a real Mosquitto with the password file and ACL of
docs/mqtt.md: each attack of issue 22 is refused here, by name."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import structlog
from mqtt_acl import secured_broker
from mqtt_broker import Mosquitto
from mqtt_raw import RawClient
from mqtt_rig import Commander, Subscriber, load, running_app, service, sims, write_config
from paho.mqtt.properties import Properties

from cellctl.command_payloads import COMMANDS
from cellctl.command_twins import URGENT_COMMANDS, Channel
from cellctl.errors import ConfigError
from cellctl.telemetry.broker import Anonymous, probe_anonymous
from cellctl.telemetry.link import LinkSettings
from cellctl.telemetry.topics import Topics

CELL_USER = "cell-t1"
USERS = {
    CELL_USER: "cell-pw",
    "alice": "alice-pw",  # operator
    "bob": "bob-pw",  # viewer
    "carol": "carol-pw",  # planner
    "dave": "dave-pw",  # maintenance
    "root": "root-pw",  # admin
    "mallory": "mallory-pw",  # logged in, no role
    "alice/submit": "trick-pw",  # a user name with '/' the broker accepts
}
ACCESS = """
[access.users]
alice = ["operator"]
bob = ["viewer"]
carol = ["planner"]
dave = ["maintenance"]
root = ["admin"]
"""
# The role table of docs/mqtt.md, written out: what each user may do.
EVERYONE = {"estop"}
MAY = {
    "alice": EVERYONE
    | {"jobs", "devices", "pause", "resume", "stop", "reset", "answer", "answer_hold"}
    | {"resume_from", "programs"},
    "bob": EVERYONE | {"jobs", "devices", "programs"},
    "carol": EVERYONE
    | {"jobs", "devices", "programs", "submit", "reprint", "cancel", "put_program"}
    | {"set_priority"},
    "dave": EVERYONE
    | {
        "jobs",
        "devices",
        "programs",
        "reset",
        "set_setup",
        "out_of_service",
        "into_service",
        "maintain",
    },
    "root": set(COMMANDS),
    "mallory": EVERYONE,
}
BOUND = 15.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = secured_broker(tmp_path_factory.mktemp("secured"), CELL_USER, "t1", USERS)
    yield broker
    broker.stop()


def cell_config(tmp_path: Path, port: int, access: str = ACCESS, mqtt_extra: str = "") -> Path:
    (tmp_path / "cellpw").write_text("cell-pw\n")
    extra = f'username = "{CELL_USER}"\npassword = {{ file = "{tmp_path / "cellpw"}" }}\n'
    return write_config(tmp_path / "cell.toml", port, mqtt_extra=extra + mqtt_extra, access=access)


async def login(port: int, user: str, topics: Topics) -> Subscriber:
    return await Subscriber(
        port,
        [f"{topics.base}/status", f"{topics.replies(user)}/#"],
        username=user,
        password=USERS[user],
    ).start()


def audit_rows(tmp_path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
        rows = conn.execute("SELECT command, outcome, origin FROM command_audit ORDER BY id")
        return [(c, o, json.loads(origin)) for c, o, origin in rows]


def raw(port: int, user: str | None, mqtt5: bool = True) -> RawClient:
    return RawClient(port, None if user is None else (user, USERS[user]), mqtt5)


def refused(rc: Any) -> bool:
    return bool(getattr(rc, "is_failure", False)) and "authori" in rc.getName().lower()


async def test_each_role_may_do_exactly_its_commands(tmp_path: Path, secured: Mosquitto) -> None:
    cell = load(cell_config(tmp_path, secured.port))
    topics = Topics(cell.name)
    clients = {u: await login(secured.port, u, topics) for u in MAY}
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_app(cell) as app:
                await clients["alice"].online()
                # The urgent connection logs in as the cell's user too, under the same ACL.
                intake = service(app).intake
                assert intake is not None
                twins = intake.twins
                await clients["alice"].wait_for(
                    lambda: twins.up[Channel.URGENT], "urgent connection subscribed"
                )
                for user, may in MAY.items():
                    cmd = Commander(clients[user], topics)
                    for name in sorted(COMMANDS):
                        # `{"device": "nope"}`-like bodies: a permitted command still changes
                        # nothing (unknown device, missing fields), so the loop stays harmless.
                        body = {} if name == "estop" else {"device": "nope", "job": "nope"}
                        reply = await cmd.send(name, body)
                        denied = "lacks permission" in reply["reason"]
                        assert denied == (name not in may), (user, name, reply)
                        if denied:
                            assert reply["outcome"] == "rejected"
                            assert f"'{name}'" in reply["reason"] and f"'{user}'" in reply["reason"]
                assert {c for s in sims(cell) for c, _ in s.commands} <= {"estop"}
                # Each estop, stop and pause came on both connections: one copy dropped.
                urgent = len(MAY) * len(URGENT_COMMANDS)
                await clients["alice"].wait_for(lambda: twins.dropped == urgent, "twins")
        # The documented ACL lets the cell publish all it publishes (status, replies, audit …).
        assert not [e for e in logs if "refused" in e["event"]], logs
        rows = audit_rows(tmp_path)
        assert len(rows) == len(MAY) * len(COMMANDS)
        assert {r[2]["user"] for r in rows} == set(MAY)
        assert all(r[2]["verified"] for r in rows)
    finally:
        for c in clients.values():
            c.stop()


async def test_nobody_publishes_as_another_user(tmp_path: Path, secured: Mosquitto) -> None:
    """mallory as alice, and the user named `alice/submit`: refused by the broker or never
    seen by the cell. Over MQTT 3.1.1 the broker drops the publish: no reply, no audit."""
    cell = load(cell_config(tmp_path, secured.port))
    topics = Topics(cell.name)
    alice = await login(secured.port, "alice", topics)
    try:
        async with running_app(cell):
            await alice.online()
            # No login at all: refused, over both protocols (the start check's own probe).
            for mqtt5 in (True, False):
                settings = LinkSettings(port=secured.port, mqtt5=mqtt5)
                result, why = await probe_anonymous(settings)
                assert result is Anonymous.REFUSED, why
            submit = {"job": "evil", "steps": [{"process": "print", "gcode": "M112\n"}]}
            async with raw(secured.port, "mallory") as mallory:
                for name in ("pause", "submit", "estop"):
                    assert refused(await mallory.publish(topics.command("alice", name), submit))
            async with raw(secured.port, "mallory", mqtt5=False) as mallory311:
                await mallory311.publish(topics.command("alice", "cancel"), {"job": "x"})
            async with raw(secured.port, "alice/submit") as trick:
                # The broker lets this user write cmd/alice/submit/<x> (three levels) …
                rc = await trick.publish(topics.command("alice", "submit") + "/x", submit)
                assert not rc.is_failure
                # … which the cell never takes; cmd/alice/submit itself is refused.
                assert refused(await trick.publish(topics.command("alice", "submit"), submit))
            # Alice's own command, after all of those: the cell answers, and nothing
            # else reached it.
            r = await Commander(alice, topics).send("jobs", {})
            assert r["outcome"] == "accepted" and r["result"] == []
        # A refusal would have been audited; alice's query is not (it changes nothing).
        assert audit_rows(tmp_path) == []
    finally:
        alice.stop()


async def test_nobody_but_the_cell_writes_replies(tmp_path: Path, secured: Mosquitto) -> None:
    """The forged `"outcome": "accepted"` of issue 22: into another user's replies, into
    one's own, and into the v1 reply topic. Even an admin cannot."""
    topics = Topics("t1")
    forged = {"v": 1, "command": "estop", "outcome": "accepted", "reason": "", "result": None}
    async with raw(secured.port, "bob") as bob:
        await bob.subscribe(f"{topics.replies('bob')}/#")
        async with raw(secured.port, "root") as root:
            for topic in (
                topics.reply("bob", "estop"),
                topics.reply("root", "estop"),
                f"{topics.base}/cmd/estop/reply",
                f"{topics.base}/devices/d1/alarms",
            ):
                assert refused(await root.publish(topic, forged)), topic
        async with raw(secured.port, "alice", mqtt5=False) as alice311:
            await alice311.publish(topics.reply("bob", "estop"), forged)  # dropped silently
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await bob.got.get()


async def test_a_response_topic_outside_the_users_replies_is_refused(
    tmp_path: Path, secured: Mosquitto
) -> None:
    """A command asking for its reply on a device's alarms (or another user's replies)
    would lend the cell's write rights to the sender: refused, answered on the user's own
    reply topic, audited, and nothing is written where it asked."""
    cell = load(cell_config(tmp_path, secured.port))
    topics = Topics(cell.name)
    alarms = topics.alarms("d1")
    watcher = await Subscriber(
        secured.port,
        [f"{topics.base}/status", alarms, f"{topics.replies('bob')}/#"],
        username=CELL_USER,
        password=USERS[CELL_USER],
    ).start()
    try:
        async with running_app(cell), raw(secured.port, "alice") as alice:
            await watcher.online()
            await alice.subscribe(f"{topics.replies('alice')}/#")
            for i, where in enumerate(
                (alarms, topics.reply("bob", "x"), f"{topics.replies('alice')}/+", "elsewhere")
            ):
                props = Properties(paho.PacketTypes.PUBLISH)
                props.ResponseTopic = where
                props.CorrelationData = f"c{i}".encode()
                rc = await alice.publish(topics.command("alice", "pause"), {"device": "d1"}, props)
                assert not rc.is_failure
                async with asyncio.timeout(BOUND):
                    msg = await alice.got.get()
                assert msg.topic == topics.reply("alice", "pause")
                assert msg.properties.CorrelationData == f"c{i}".encode()
                reply = json.loads(msg.payload)
                assert reply["outcome"] == "rejected"
                assert f"response topic {where!r} refused" in reply["reason"], reply
            # Her own reply tree is fine.
            props = Properties(paho.PacketTypes.PUBLISH)
            props.ResponseTopic = f"{topics.replies('alice')}/mine"
            props.CorrelationData = b"ok"
            await alice.publish(topics.command("alice", "jobs"), {}, props)
            async with asyncio.timeout(BOUND):
                msg = await alice.got.get()
            assert msg.topic == f"{topics.replies('alice')}/mine"
            assert json.loads(msg.payload)["outcome"] == "accepted"
        assert not [m for m in watcher.messages if m.topic == alarms or "/replies/bob" in m.topic]
        rows = audit_rows(tmp_path)
        # The refusals are audited; the allowed query is not (it changes nothing).
        assert [(c, o) for c, o, _ in rows] == [("pause", "rejected")] * 4
    finally:
        watcher.stop()


async def test_mqtt_311_commands_and_replies(tmp_path: Path, secured: Mosquitto) -> None:
    """3.1.1: the reply is on replies/<user>/<command>, matched by "id"; a command a role
    does not allow is rejected there too."""
    cell = load(cell_config(tmp_path, secured.port))
    topics = Topics(cell.name)
    watcher = await login(secured.port, "bob", topics)
    try:
        async with running_app(cell), raw(secured.port, "bob", mqtt5=False) as bob:
            await watcher.online()
            await bob.subscribe(f"{topics.replies('bob')}/#")
            await bob.publish(topics.command("bob", "jobs"), {"id": "q1"})
            await bob.publish(topics.command("bob", "cancel"), {"id": "q2", "job": "j"})
            got = {}
            async with asyncio.timeout(BOUND):
                while len(got) < 2:
                    m = await bob.got.get()
                    got[m.topic] = json.loads(m.payload)
            jobs, cancel = got[topics.reply("bob", "jobs")], got[topics.reply("bob", "cancel")]
            assert jobs["id"] == "q1" and jobs["outcome"] == "accepted"
            assert cancel["id"] == "q2" and cancel["outcome"] == "rejected"
            assert "lacks permission 'cancel'" in cancel["reason"]
    finally:
        watcher.stop()


async def test_an_open_broker_stops_the_start(tmp_path: Path, broker: Mosquitto) -> None:
    """The test broker lets anyone in: without allow_anonymous the daemon does not start."""
    from mqtt_rig import REGISTRY

    from cellctl.app import App

    cell = load(write_config(tmp_path / "cell.toml", broker.port, access="everyone = []"))
    app = App(cell, REGISTRY)
    async with asyncio.timeout(BOUND):
        with pytest.raises(ConfigError) as err:
            await app.run()
    (problem,) = err.value.problems
    assert "access.allow_anonymous" in problem and "accepts clients without credentials" in problem
    assert not app.supervisor.runners or not any(
        r.connected.is_set() for r in app.supervisor.runners.values()
    )


def test_cellctl_run_refuses_an_open_broker_with_one_message(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "cell.toml", broker.port, devices=0, access="")
    done = subprocess.run(
        [sys.executable, "-m", "cellctl", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start: the broker accepts anonymous clients" in done.stderr
    assert "access.allow_anonymous" in done.stderr and "Traceback" not in done.stderr


async def test_legacy_topics_get_only_what_everyone_may(tmp_path: Path, broker: Mosquitto) -> None:
    """`legacy_commands = true`: v1 topics carry no user, so they get `everyone`'s rights.
    (An open broker stands in for one configured the v1 way: anyone writes cmd/<command>.)"""
    access = 'allow_anonymous = true\neveryone = ["estop", "jobs"]'
    cfg = write_config(
        tmp_path / "cell.toml", broker.port, mqtt_extra="legacy_commands = true", access=access
    )
    cell = load(cfg)
    topics = Topics(cell.name)
    watcher = await Subscriber(broker.port, [f"{topics.base}/status"]).start()
    try:
        async with running_app(cell), raw(broker.port, None, mqtt5=False) as old:
            await watcher.online()
            await old.subscribe(f"{topics.base}/cmd/+/reply")
            await old.publish(topics.legacy_command("jobs"), {"id": "a"})
            await old.publish(topics.legacy_command("submit"), {"id": "b"})
            got = {}
            async with asyncio.timeout(BOUND):
                while len(got) < 2:
                    m = await old.got.get()
                    got[m.topic] = json.loads(m.payload)
            assert got[topics.legacy_reply("jobs")]["outcome"] == "accepted"
            submit = got[topics.legacy_reply("submit")]
            assert submit["outcome"] == "rejected" and "needs a user" in submit["reason"]
        rows = audit_rows(tmp_path)
        # The cell's own v1 replies came back on cmd/+/+ and were not taken for commands.
        # (The allowed query is answered, not audited.)
        assert [(c, o, origin["user"]) for c, o, origin in rows] == [("submit", "rejected", None)]
    finally:
        watcher.stop()


async def test_the_cli_as_a_user_under_the_documented_acl(
    tmp_path: Path, secured: Mosquitto
) -> None:
    """`cellctl` logged in as alice (operator): her commands go, a planner's is refused with
    the permission named, `status` reads the cell; a claimed `user` property changes nothing."""
    cfg = cell_config(tmp_path, secured.port)
    cell = load(cfg)
    topics = Topics(cell.name)
    watcher = await login(secured.port, "alice", topics)

    def cellctl(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CELLCTL_MQTT_USERNAME": user,
            "CELLCTL_MQTT_PASSWORD": USERS[user],
        }
        return subprocess.run(
            [sys.executable, "-m", "cellctl", *argv, "-c", str(cfg), "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env=env,
        )

    try:
        async with running_app(cell):
            await watcher.online()
            done = await asyncio.to_thread(cellctl, "alice", "ack", "d1", "acknowledge")
            # Allowed, and refused only for what the cell holds: no step waits on d1.
            assert done.returncode == 1 and "no step is held on device 'd1'" in done.stderr
            done = await asyncio.to_thread(cellctl, "bob", "ack", "d1", "acknowledge")
            assert done.returncode == 1, done
            assert "rejected: user 'bob' lacks permission 'answer'" in done.stderr
            done = await asyncio.to_thread(cellctl, "mallory", "estop", "--reason", "drill")
            assert done.returncode == 0, done.stderr  # estop: everyone
            done = await asyncio.to_thread(cellctl, "alice", "status")
            assert "cell t1: online" in done.stdout, done
            # The documented ACL lets a user read the retained snapshots (and the cell
            # write them: a refused publish would never be retained).
            reader = await Subscriber(
                secured.port,
                [f"{topics.base}/cell", f"{topics.base}/devices/+/snapshot"],
                username="alice",
                password=USERS["alice"],
            ).start()
            try:
                await reader.wait_for(
                    lambda: bool(reader.on("/cell")) and len(reader.on("/snapshot")) >= 2,
                    "the retained snapshots under the documented ACL",
                )
            finally:
                reader.stop()
            # A claim in user properties is a note, never the identity.
            props = Properties(paho.PacketTypes.PUBLISH)
            props.UserProperty = ("user", "plant-manager")
            props.ResponseTopic = f"{topics.replies('bob')}/x"
            async with raw(secured.port, "bob") as bob:
                await bob.subscribe(f"{topics.replies('bob')}/#")
                await bob.publish(topics.command("bob", "set_setup"), {"device": "d1"}, props)
                async with asyncio.timeout(BOUND):
                    reply = json.loads((await bob.got.get()).payload)
            assert "user 'bob' lacks permission 'set_setup'" in reply["reason"]
        rows = audit_rows(tmp_path)
        assert [(c, o["user"]) for c, _, o in rows] == [
            ("answer", "alice"),
            ("answer", "bob"),
            ("estop", "mallory"),
            ("set_setup", "bob"),
        ]
        assert rows[-1][2]["user_properties"] == {"user": "plant-manager"}
    finally:
        watcher.stop()


async def test_an_open_broker_found_after_start_leaves_only_what_everyone_may(
    tmp_path: Path,
) -> None:
    """No broker at start: the check waits for the first connection. The broker that
    then appears lets anyone in, so user names are claims: alice's role no longer counts."""
    from mqtt_broker import free_port

    port = free_port()
    cell = load(write_config(tmp_path / "cell.toml", port, devices=1, access=ACCESS))
    topics = Topics(cell.name)
    async with running_app(cell) as app:
        late = Mosquitto(tmp_path / "late", port=port)  # anonymous, as in the test suite
        late.start()
        try:
            sub = await Subscriber(port, [topics.everything]).start()
            try:
                await sub.online()
                cmd = Commander(sub, topics, user="alice")
                r = await cmd.send("jobs", {})
                assert r["outcome"] == "rejected" and "not verified" in r["reason"], r
                r = await cmd.send("estop", {})
                assert r["outcome"] == "accepted", r
                assert app.mqtt is not None and app.mqtt.commands is not None
                assert not app.mqtt.commands.access.verified
            finally:
                sub.stop()
        finally:
            late.stop()


async def test_only_the_cell_writes_the_plan_and_report_and_everyone_reads_them(
    tmp_path: Path, secured: Mosquitto
) -> None:
    """The retained `plan`, `plan/problem` and `report` under the documented ACL."""
    topics = Topics("t1")
    body = {"v": 1}
    mine = {topics.plan, topics.plan_problem, topics.report}
    async with raw(secured.port, "bob") as bob:
        await bob.subscribe(f"{topics.plan}/#")
        await bob.subscribe(topics.report)
        async with raw(secured.port, CELL_USER) as cell:
            for topic in sorted(mine):
                assert not refused(await cell.publish(topic, body)), topic
        # An earlier test's planner cell (the same name, on this module's broker) may
        # have left its own retained plan: bob gets those first, flagged retained.
        got: set[str] = set()
        async with asyncio.timeout(BOUND):
            while got != mine:
                m = await bob.got.get()
                if not m.retain:
                    got.add(m.topic)
        assert got == mine
        async with raw(secured.port, "root") as root:
            assert refused(await root.publish(topics.plan, {"v": 1, "forged": True}))
