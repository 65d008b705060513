"""The link's coalesced writes against a real Mosquitto: nothing lost, reordered or doubled.

The link's paho client buffers what one `loop_write()` produces and sends it
at once, and reports QoS 1 acknowledgements without `on_publish`
(cellctl/telemetry/pahoclient.py). Both override paho internals, so these
tests pin the behaviour on the installed paho, over plain TCP and TLS.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from mqtt_broker import Mosquitto
from mqtt_rig import BOUND, Subscriber

from cellctl.telemetry.encoding import Kind, Outgoing
from cellctl.telemetry.link import LinkSettings, MqttLink


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_bursts_arrive_complete_in_order_and_acks_once(tmp_path: Path, mqtt5: bool) -> None:
    # Unlimited queues: Mosquitto's defaults (1000 queued per client) would drop the burst.
    broker = Mosquitto(
        tmp_path / "broker", extra="max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    broker.start()
    try:
        await _bursts(broker, mqtt5)
    finally:
        broker.stop()


async def _bursts(broker: Mosquitto, mqtt5: bool) -> None:
    sub = await Subscriber(broker.port, ["burst/#"], qos=1).start()
    link = MqttLink(LinkSettings(port=broker.port, client_id="burst", mqtt5=mqtt5))
    acks: Counter[int] = Counter()
    refused: list[int] = []

    def on_ack(mid: int, ok: bool) -> None:
        acks[mid] += 1
        if not ok:
            refused.append(mid)

    link.on_ack = on_ack
    n0, n1 = 5000, 2000
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(link.run())
            await link.wait_connected(BOUND)
            # One loop turn each: the whole burst is queued before paho may write.
            for i in range(n0):
                link.publish(Outgoing("burst/zero", str(i).encode(), Kind.SAMPLES, qos=0))
                if i == n0 // 2:
                    # A QoS 1 message in the middle: the QoS 0 ones behind it must wait
                    # for paho's queue, not overtake it.
                    link.publish(Outgoing("burst/mid", b"mid", Kind.ALARM, qos=1))
            big = b"x" * 200_000  # a three-byte remaining length
            link.publish(Outgoing("burst/big", big, Kind.SAMPLES, qos=0))
            mids = [
                link.publish(Outgoing("burst/one", str(i).encode(), Kind.ALARM, qos=1))
                for i in range(n1)
            ]
            await sub.wait_for(lambda: len(sub.messages) >= n0 + n1 + 2, "both bursts")
            async with asyncio.timeout(BOUND):
                while len(acks) < n1:
                    await asyncio.sleep(0.01)
            await link.close(Outgoing("burst/final", b"bye", Kind.STATUS, qos=1), within_s=BOUND)
            await sub.wait_for(lambda: bool(sub.on("/final")), "the final message")
            task.cancel()
    finally:
        sub.stop()

    order = [m.topic for m in sub.messages]
    mid_at = order.index("burst/mid")
    assert order[:mid_at].count("burst/zero") == n0 // 2 + 1  # sent before it, arrived before it
    zero = [int(m.payload) for m in sub.on("/zero")]
    one = [int(m.payload) for m in sub.on("/one")]
    assert zero == list(range(n0))
    assert one == list(range(n1))
    # Every QoS 1 message acknowledged exactly once; QoS 0 ones are never reported.
    assert None not in mids
    assert set(acks) >= set(mids) and all(acks[m] == 1 for m in mids)
    assert not refused
    assert [m.payload for m in sub.on("/big")] == [big]
    assert link.stats.published == n0 + n1 + 3
