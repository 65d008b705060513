"""A subscriber that connects at any time sees the whole cell, as the daemon holds it.

The documented way to reconstruct (docs/mqtt.md, "The retained snapshot"): take
each device's newest `devices/<id>/snapshot`, apply the `samples` that came
after it, and take the newest `cell`. That must equal the daemon's own
snapshot after a hold, a device reconnect, a broker restart, and when the
broker comes up after the devices.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from mqtt_broker import Mosquitto, free_port
from mqtt_rig import (
    BOUND,
    Commander,
    Message,
    Subscriber,
    load,
    running_app,
    service,
    sims,
    write_config,
)

from cellctl.app import App
from cellctl.telemetry.snapshot import cell_dict, device_dict
from cellctl.telemetry.topics import Topics


def reconstruct(messages: list[Message], topics: Topics) -> tuple[dict[str, Any], Any]:
    devices: dict[str, dict[str, Any]] = {}
    cell: Any = None
    for m in messages:
        tail = m.topic[len(topics.base) + 1 :].split("/")
        if tail == ["cell"]:
            cell = {k: v for k, v in m.json().items() if k not in ("v", "ts")}
        if len(tail) != 3 or tail[0] != "devices":
            continue
        if tail[2] == "snapshot":
            devices[tail[1]] = {k: v for k, v in m.json().items() if k not in ("v", "ts")}
        elif tail[2] == "samples" and tail[1] in devices:
            metrics = devices[tail[1]]["metrics"]
            for s in m.json()["samples"]:
                entry = metrics.setdefault(s["name"], {"type": None, "unit": "", "description": ""})
                entry.update(value=s["value"], quality=s["quality"], ts=s["ts"])
    return devices, cell


def daemon_view(app: App) -> tuple[dict[str, Any], Any]:
    pub = service(app).publisher
    assert pub is not None
    devices = {d: device_dict(s) for d, s in pub.snapshots.devices().items()}
    # Through JSON, as a subscriber sees it (tuples become lists).
    return json.loads(json.dumps(devices)), json.loads(json.dumps(cell_dict(pub.snapshots.cell())))


async def late_subscriber_agrees(app: App, port: int, topics: Topics, what: str) -> Subscriber:
    sub = await Subscriber(port, [topics.everything]).start()
    last: list[Any] = []

    def same() -> bool:
        mine, theirs = reconstruct(sub.messages, topics), daemon_view(app)
        last[:] = [copy.deepcopy(mine), theirs]
        return mine == theirs

    try:
        await sub.wait_for(same, what)
    except AssertionError:
        sub.stop()
        raise AssertionError(f"{what}: subscriber {last[0]!r}\n daemon {last[1]!r}") from None
    return sub


async def test_late_subscribers_after_hold_device_reconnect_and_broker_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    path = write_config(tmp_path / "cell.toml", broker.port)
    # The baseline's pre-flight hold (the planner would ask for a PLA changeover instead).
    with path.open("a") as f:
        f.write('\n[scheduler]\nmethod = "baseline"\n')
    cell = load(path)
    topics = Topics(cell.name)
    watcher = await Subscriber(broker.port, [topics.everything]).start()
    subs = [watcher]
    try:
        async with running_app(cell) as app:
            await watcher.online()
            d1, d2 = sims(cell)
            d1.sample("temp", 21.5)
            d2.sample("temp", 30.25)
            d2.request("load_material", "PLA please")
            cmd = Commander(watcher, topics)
            r = await cmd.send("set_setup", {"device": "d1", "setup": {"material": "PETG"}})
            assert r["outcome"] == "accepted", r
            # A program sliced for PLA on d1, which has PETG: pre-flight holds it.
            step = {"process": "print", "gcode": "; filament_type = PLA\nG1 X1\n"}
            r = await cmd.send("submit", {"job": "j7", "steps": [{**step, "device": "d1"}]})
            assert r["outcome"] == "accepted", r
            pub = service(app).publisher
            assert pub is not None
            await watcher.wait_for(lambda: bool(pub.snapshots.cell().held), "the hold")

            late = await late_subscriber_agrees(app, broker.port, topics, "after the hold")
            subs.append(late)
            devices, cell_now = reconstruct(late.messages, topics)
            assert devices["d1"]["setup"] == {"material": "PETG"}
            assert (
                devices["d1"]["step"]["key"] == "j7/0" and devices["d1"]["step"]["state"] == "held"
            )
            assert [h["step"] for h in cell_now["held"]] == ["j7/0"]
            assert {r["device"] for r in cell_now["requests"]} == {"d1", "d2"}
            temp = devices["d2"]["metrics"]["temp"]
            assert (temp["value"], temp["unit"], temp["quality"]) == (30.25, "degC", "good")

            # `cellctl status`, started after the hold, shows it from the retained state.
            out = await asyncio.to_thread(status_cli, broker.port, cell.name)
            assert "j7/0 (held)" in out and "held steps" in out, out
            assert "temp=30.25°C" in out and "material=PETG" in out and "PLA please" in out, out

            runner = app.supervisor.runners["d2"]
            connects = runner.connects
            d2.drop_link()
            await watcher.wait_for(lambda: runner.connects > connects, "d2 reconnected")
            await watcher.wait_for(lambda: runner.connected.is_set(), "d2 connected")
            d2.sample("temp", 31.0)
            subs.append(
                await late_subscriber_agrees(app, broker.port, topics, "after d2 came back")
            )

            link = service(app).link
            assert link is not None
            await asyncio.to_thread(broker.stop)  # no persistence: every retained message is gone
            async with asyncio.timeout(BOUND):
                while link.is_connected:
                    await asyncio.sleep(0.05)
            d1.sample("temp", 22.0)  # read while the broker is down
            await asyncio.to_thread(broker.start)
            await link.wait_connected(BOUND)
            after = await late_subscriber_agrees(app, broker.port, topics, "after a broker restart")
            subs.append(after)
            assert reconstruct(after.messages, topics)[0]["d1"]["metrics"]["temp"]["value"] == 22.0
    finally:
        for s in subs:
            s.stop()


async def test_broker_up_after_the_devices_gets_every_value_and_an_empty_spool(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens: the devices connect and report first
    cell = load(write_config(tmp_path / "cell.toml", port))
    topics = Topics(cell.name)
    broker = Mosquitto(tmp_path / "broker", port=port)
    subs: list[Subscriber] = []
    try:
        async with running_app(cell) as app:
            d1, d2 = sims(cell)
            d1.sample("temp", 19.5)
            d2.sample("temp", 40.0)
            d1.alarm("E", "before the broker")
            pub = service(app).publisher
            assert pub is not None
            await asyncio.wait_for(
                _until(lambda: pub.snapshots.device("d2").reading("temp").value == 40.0), BOUND
            )
            await asyncio.to_thread(broker.start)
            sub = await late_subscriber_agrees(app, port, topics, "broker up after the devices")
            subs.append(sub)
            devices, _ = reconstruct(sub.messages, topics)
            assert devices["d1"]["metrics"]["temp"]["value"] == 19.5
            assert devices["d2"]["metrics"]["temp"]["value"] == 40.0
            # Every event delivered: the spool empties by itself, and says so.
            spool = service(app).spool
            assert spool is not None
            await sub.wait_for(
                lambda: (
                    any(m.json()["depth"] == 0 for m in sub.on("/spool"))
                    and not spool.counters.depth
                ),
                "spool depth 0",
            )
            delivered = {(m.topic, m.json()["seq"]) for m in sub.messages if "seq" in m.json()}
            assert delivered
        # Stopped cleanly while the broker was there: nothing is left to send.
        with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
            left = conn.execute("SELECT topic, payload FROM telemetry_spool").fetchall()
        assert left == []
        # A restart re-sends nothing that was delivered.
        again = await Subscriber(port, [topics.everything]).start()
        subs.append(again)
        async with running_app(cell) as app:
            spool = service(app).spool
            assert spool is not None
            await again.online()
            sims(cell)[0].alarm("F", "after the restart")
            await again.wait_for(lambda: bool(again.on("d1/alarms")), "the new alarm")
        # (A retained message the broker hands a new subscriber is not a re-send.)
        resent = {
            (m.topic, m.json()["seq"]) for m in again.messages if "seq" in m.json() and not m.retain
        }
        assert not resent & delivered, resent & delivered
    finally:
        for s in subs:
            s.stop()
        broker.stop()


async def test_seq_counts_per_topic_without_gaps(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    alarms = await Subscriber(broker.port, [topics.alarms("d1")]).start()
    states = await Subscriber(broker.port, [topics.state("d1")]).start()
    try:
        async with running_app(cell) as app:
            (d1,) = sims(cell)
            for i in range(10):
                d1.alarm()
                d1.set_state("execute" if i % 2 == 0 else "held")
                d1.request("acknowledge", f"r{i}")
            await alarms.wait_for(lambda: len(alarms.messages) >= 10, "10 alarms")
            # The connect, then ten changes.
            await states.wait_for(lambda: len(states.messages) >= 11, "11 states")
            assert service(app).publisher is not None
        got = [m.json()["seq"] for m in alarms.messages]
        assert got == list(range(1, len(got) + 1))
        # The connect, the changes, the shutdown's unavailable: one unbroken run, although
        # alarms and requests of the same device were numbered in between.
        seqs = [m.json()["seq"] for m in states.messages]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 11
    finally:
        alarms.stop()
        states.stop()


def status_cli(port: int, cell: str) -> str:
    where = ["--host", "127.0.0.1", "--port", str(port), "--cell", cell]
    done = subprocess.run(
        [sys.executable, "-m", "cellctl", "status", *where],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.05)
