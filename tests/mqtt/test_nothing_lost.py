"""Events survive a broker outage and a daemon SIGKILL: delivered in order, no sequence gaps."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import defaultdict
from pathlib import Path

from mqtt_broker import Mosquitto, free_port
from mqtt_rig import Message, Subscriber, load, running_app, service, sims, write_config
from support.daemon import spawn

from cellctl.telemetry.topics import Topics

# A 30 s outage: long enough for several failed reconnects with backoff and a spool
# that grows past its first group commits. CELLCTL_MQTT_OUTAGE_S shortens it locally.
OUTAGE_S = float(os.environ.get("CELLCTL_MQTT_OUTAGE_S", "30"))


def stream(m: Message) -> str:
    """The documented seq rule: a device's events count per topic ("d1/state", "d1/alarms")."""
    body = m.json()
    src = str(body["src"])
    return src if src in ("jobs", "audit") else f"{src}/{m.topic.rsplit('/', 1)[1]}"


def check_sequences(messages: list[Message]) -> tuple[dict[str, list[int]], int]:
    """Per stream: seqs in first-arrival order (duplicates dropped and counted)."""
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    dups = 0
    for m in messages:
        body = m.json()
        if "seq" not in body:
            continue
        key = (stream(m), body["seq"])
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        firsts[key[0]].append(body["seq"])
    return firsts, dups


async def test_broker_outage_loses_no_event(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=2))
    topics = Topics(cell.name)
    # A persistent session: the broker keeps what arrives while this subscriber reconnects.
    sub = Subscriber(broker.port, [f"{topics.base}/devices/#"], persistent=True)
    sub.client.reconnect_delay_set(0.1, 0.5)
    await sub.start()
    try:
        async with running_app(cell) as app:
            link = service(app).link
            assert link is not None
            d1, d2 = sims(cell)
            for _ in range(20):
                d1.alarm()
                d2.alarm()
            await sub.wait_for(lambda: len(sub.on("/alarms")) >= 40, "alarms before the outage")
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(10):
                while link.is_connected:
                    await asyncio.sleep(0.05)
            # The outage: events keep coming; none can reach the broker.
            loop = asyncio.get_running_loop()
            end = loop.time() + OUTAGE_S
            during = 0
            while loop.time() < end:
                d1.alarm()
                d2.alarm()
                d1.set_state("execute" if during % 2 == 0 else "held")
                during += 1
                await asyncio.sleep(0.1)
            assert not link.is_connected
            spool = service(app).spool
            assert spool is not None and spool.counters.depth >= 3 * during
            await asyncio.to_thread(broker.start)
            # What the daemon numbered: 1 connected state, 20 alarms, the outage's events.
            streams = ("d1/state", "d1/alarms", "d2/state", "d2/alarms")
            total = {s: spool.last_seq(s) for s in streams}
            assert total == {
                "d1/state": 1 + during,
                "d1/alarms": 20 + during,
                "d2/state": 1,
                "d2/alarms": 20 + during,
            }
            try:
                await sub.wait_for(
                    lambda: all(
                        max(check_sequences(sub.messages)[0].get(d, [0])) >= n
                        for d, n in total.items()
                    ),
                    "every event after the outage",
                    within_s=60,
                )
            except AssertionError:
                firsts, dups = check_sequences(sub.messages)
                got = {d: (len(v), v[:3], v[-3:]) for d, v in firsts.items()}
                raise AssertionError(f"expected {total}, got {got}, {spool.counters}") from None
        firsts, dups = check_sequences(sub.messages)
        for dev, n in total.items():
            assert firsts[dev][:n] == list(range(1, n + 1)), f"{dev}: gap or disorder"
            # The cell's shutdown (devices going unavailable) may follow; nothing else may.
            assert all(seq > n for seq in firsts[dev][n:]), f"{dev}: disorder after the outage"
        print(
            f"\noutage {OUTAGE_S:.0f} s: {sum(total.values())} events in order, {dups} duplicates"
        )
    finally:
        sub.stop()
        broker.stop()


async def test_sigkilled_daemon_delivers_spooled_events_after_restart(tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: every event stays in the spool
    config = write_config(tmp_path / "cell.toml", port, devices=2, burst=30, name="k1")
    db = tmp_path / "state" / "cellctl.db"
    first = spawn(config, tmp_path / "first.log")

    def spooled() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db, timeout=5) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM telemetry_spool").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    try:
        async with asyncio.timeout(30):
            while await asyncio.to_thread(spooled) < 2 * 31:  # connected state + 30 alarms each
                assert first.poll() is None, (tmp_path / "first.log").read_text()
                await asyncio.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    with sqlite3.connect(db) as conn:
        before = dict(conn.execute("SELECT source, seq FROM telemetry_seq").fetchall())
    assert before["d1/alarms"] >= 30 and before["d2/alarms"] >= 30
    assert before["d1/state"] >= 1 and before["d2/state"] >= 1

    broker = Mosquitto(tmp_path / "broker", port=port)
    broker.start()
    topics = Topics("k1")
    sub = await Subscriber(port, [f"{topics.base}/devices/#"]).start()
    second = spawn(config, tmp_path / "second.log")
    try:
        await sub.wait_for(
            lambda: all(
                set(range(1, n + 1)) <= set(check_sequences(sub.messages)[0].get(d, []))
                for d, n in before.items()
            ),
            "the events spooled before the kill",
            within_s=30,
        )
        firsts, _ = check_sequences(sub.messages)
        for dev in before:
            seqs = firsts[dev]
            assert seqs == list(range(1, len(seqs) + 1)), f"{dev}: gap or disorder"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=15)
        sub.stop()
        broker.stop()
