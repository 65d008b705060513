"""Events to the broker, wired once: the spool, the link, the sender that drains the one
into the other, and the publisher that feeds the spool from the event bus.

The daemon's MQTT service, the sender tests and the telemetry benchmark all run this
same pipeline; each adds only what it needs around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cellctl.config import TelemetrySection
from cellctl.events import Subscription
from cellctl.store import Store
from cellctl.tasks import TaskGroup
from cellctl.telemetry.encoding import Encoding
from cellctl.telemetry.link import MqttLink
from cellctl.telemetry.publisher import Publisher
from cellctl.telemetry.sender import SpoolSender
from cellctl.telemetry.spool import Spool


@dataclass(frozen=True, slots=True)
class Pipeline:
    spool: Spool
    link: MqttLink
    sender: SpoolSender
    publisher: Publisher

    @classmethod
    async def open(
        cls,
        store: Store,
        link: MqttLink,
        encoding: Encoding,
        telemetry: TelemetrySection,
        *,
        window: int,
        spool_max: int = 100_000,
        commit_s: float = 0.02,
        samples_qos: int = 0,
        device_ids: Sequence[str] = (),
    ) -> Pipeline:
        """The pipeline over `link`, its spool loaded from `store`; the link's acks,
        connects and disconnects go to the sender (replace `on_connected` with a
        callback that also calls `sender.connected` to do more on a connect)."""
        spool = Spool(store, spool_max, commit_s)
        await spool.load()
        sender = SpoolSender(spool, link, window)
        publisher = Publisher(encoding, spool, link, telemetry, samples_qos, device_ids)
        link.on_ack = sender.on_ack
        link.on_connected = sender.connected
        link.on_disconnected = sender.disconnected
        return cls(spool, link, sender, publisher)

    def start(self, tg: TaskGroup, events: Subscription) -> list[asyncio.Task[Any]]:
        """Its four loops, in `tg`: the link, the bus consumer, the spool writer, the sender."""
        return [
            tg.create_task(self.link.run(), name="mqtt-link"),
            tg.create_task(self.publisher.consume(events), name="mqtt-events"),
            tg.create_task(self.spool.run(), name="mqtt-spool"),
            tg.create_task(self.sender.run(), name="mqtt-sender"),
        ]
