"""The spool sender against a real Mosquitto: early sends, backlog, order, and cleanup.

Events keep coming while the broker goes away and comes back, so the sender
switches between sending entries before their commit (caught up), draining
the backlog from SQLite (after a reconnect) and the freshly committed rows.
Whatever the mix: every event arrives, in order per source, and once all is
acknowledged the spool is empty (early-acknowledged rows are deleted too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mqtt_broker import Mosquitto
from mqtt_rig import BOUND, Subscriber

from cellctl.config import TelemetrySection
from cellctl.events import EventBus
from cellctl.model import Alarm
from cellctl.store import Store
from cellctl.telemetry.encoding import JsonEncoding
from cellctl.telemetry.link import LinkSettings, MqttLink
from cellctl.telemetry.pipeline import Pipeline
from cellctl.telemetry.sender import SpoolSender
from cellctl.telemetry.spool import Spool
from cellctl.telemetry.topics import Topics


@dataclass
class Rig:
    bus: EventBus
    link: MqttLink
    spool: Spool
    sender: SpoolSender


@asynccontextmanager
async def pipeline(port: int, db: Path, commit_s: float) -> AsyncIterator[Rig]:
    bus = EventBus()
    sub = bus.subscribe("mqtt", lossless=True)
    async with Store(db) as store:
        link = MqttLink(
            LinkSettings(
                port=port, client_id="sender", reconnect_initial_s=0.05, reconnect_max_s=0.2
            )
        )
        pipe = await Pipeline.open(
            store, link, JsonEncoding(Topics("t")), TelemetrySection(), window=50, commit_s=commit_s
        )
        async with asyncio.TaskGroup() as tg:
            tasks = pipe.start(tg, sub)
            try:
                yield Rig(bus, link, pipe.spool, pipe.sender)
            finally:
                await link.close()
                for t in tasks:
                    t.cancel()


@pytest.mark.parametrize("commit_s", [0.0, 0.02], ids=["commit-on-idle", "window-20ms"])
async def test_events_in_order_through_outage_with_early_sends(
    tmp_path: Path, commit_s: float
) -> None:
    # Unlimited queues: Mosquitto's defaults would drop part of the subscriber's backlog.
    broker = Mosquitto(
        tmp_path / "broker",
        persistence=True,
        extra="max_queued_messages 0\nmax_inflight_messages 0\n",
    )
    broker.start()
    sub = await Subscriber(broker.port, [f"{Topics('t').base}/#"], persistent=True).start()
    sub.client.reconnect_delay_set(0.05, 0.2)
    sent = {"a": 0, "b": 0}

    async def produce(p: Rig, n: int) -> None:
        for _ in range(n):
            for dev in sent:
                sent[dev] += 1
                p.bus.publish(Alarm(dev, f"A{sent[dev]}", "x"))
            await asyncio.sleep(0.002)

    try:
        async with pipeline(broker.port, tmp_path / "spool.db", commit_s) as p:
            await p.link.wait_connected(BOUND)
            await produce(p, 100)  # connected and caught up: most go out early
            early_before = p.sender.sent_early
            assert early_before > 0
            await asyncio.to_thread(broker.stop)
            await produce(p, 100)  # offline: spooled only
            restart = asyncio.create_task(asyncio.to_thread(broker.start))
            await produce(p, 300)  # through the reconnect and the backlog drain
            await restart
            await produce(p, 100)
            expected = sum(sent.values())
            await sub.wait_for(
                lambda: (
                    len({(m.json()["src"], m.json()["seq"]) for m in sub.on("/alarms")}) >= expected
                ),
                f"all {expected} alarms",
            )
            # Every row acknowledged, early ones included, is deleted by the next commit.
            async with asyncio.timeout(BOUND):
                while p.spool.counters.depth:
                    await p.spool.flush()
                    await asyncio.sleep(0.02)
            assert p.sender.sent_early > early_before  # early sending resumed after the outage
    finally:
        sub.stop()
        broker.stop()

    firsts: dict[str, list[int]] = {"a": [], "b": []}
    seen: set[tuple[str, int]] = set()
    for m in sub.on("/alarms"):
        body = m.json()
        key = (body["src"], body["seq"])
        if body["src"] in firsts and key not in seen:
            seen.add(key)
            firsts[body["src"]].append(body["seq"])
    for dev, n in sent.items():
        assert firsts[dev] == list(range(1, n + 1)), f"{dev}: gap or disorder"
