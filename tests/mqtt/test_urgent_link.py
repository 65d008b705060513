"""The urgent connection (cellctl.telemetry.urgent), over a real broker: estop, stop and
pause arrive on both of the daemon's connections and are handled, audited and answered
once; identical emergency stops sent twice are both carried out; the same holds with
the urgent connection turned off. The flood itself is benchmarks/command_load.py."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, service, sims, write_config

from cellctl.command_twins import Channel
from cellctl.telemetry.topics import Topics


def audited(tmp_path: Path) -> Counter[tuple[str, str, str]]:
    with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
        rows = conn.execute("SELECT command, outcome, origin FROM command_audit")
        return Counter((c, o, json.loads(origin)["user"]) for c, o, origin in rows)


@pytest.mark.parametrize("urgent", [True, False], ids=["urgent", "main-only"])
async def test_urgent_commands_are_handled_once(
    tmp_path: Path, broker: Mosquitto, urgent: bool
) -> None:
    extra = "" if urgent else "urgent_connection = false\n"
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=2, mqtt_extra=extra))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [f"{topics.base}/replies/#", topics.status]).start()
    al = Commander(sub, topics, "al")
    try:
        async with running_app(cell) as app:
            svc = service(app)
            await sub.online()
            assert svc.intake is not None
            twins = svc.intake.twins
            if urgent:
                assert svc.urgent is not None
                assert svc.urgent.settings.client_id == "cellctl-t1-urgent"
                await sub.wait_for(lambda: twins.up[Channel.URGENT], "urgent subscribed")
            else:
                assert svc.urgent is None
            r = await al.send("estop", {"reason": "one"})
            assert r["outcome"] == "accepted" and r["result"]["stopped"] == ["d1", "d2"], r
            for name in ("stop", "pause"):  # idle devices: refused, once
                r = await al.send(name, {"device": "d1"})
                assert r["outcome"] == "rejected" and "needs" in r["reason"], r
            # The main connection was not read while they were in hand, and is read again.
            assert (await al.send("jobs", {}))["outcome"] == "accepted"
            pause = svc.commands.on_urgent if svc.commands is not None else None
            assert (pause is not None and pause.pauses >= 1) == urgent  # type: ignore[attr-defined]
            # The same bytes twice, no correlation data (MQTT 3.1.1 style): two estops.
            for _ in range(2):
                sub.client.publish(topics.command("bo", "estop"), b'{"id": "e"}', qos=1)
            await sub.wait_for(
                lambda: len(sub.on(topics.reply("bo", "estop"))) == 2, "two estop replies"
            )
            sent_urgent = 5  # estop, stop, pause for al; two estops for bo
            if urgent:
                # Every main-connection copy arrived and was dropped as a twin.
                await sub.wait_for(lambda: twins.dropped == sent_urgent, "twins dropped")
            else:
                assert twins.dropped == 0
            assert all([c for c, _ in s.commands].count("estop") == 3 for s in sims(cell)), (
                "each estop reached each device once"
            )
        replies = Counter(
            (m.json()["command"], m.json()["outcome"])
            for m in sub.messages
            if m.topic.startswith(f"{topics.base}/replies/")
        )
        assert replies == {
            ("estop", "accepted"): 3,
            ("stop", "rejected"): 1,
            ("pause", "rejected"): 1,
            ("jobs", "accepted"): 1,
        }
        assert audited(tmp_path) == {
            ("estop", "accepted", "al"): 1,
            ("estop", "accepted", "bo"): 2,
            ("stop", "rejected", "al"): 1,
            ("pause", "rejected", "al"): 1,
        }
    finally:
        sub.stop()
