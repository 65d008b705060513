"""The app's event bus: drivers publish without waiting, consumers read at their pace.

A lossless subscriber (the store, the telemetry spool) gets an unbounded
queue: an event that must survive is never dropped in memory. A lossy one
(a live view) gets a bounded queue that drops its oldest entries and counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cellctl.model import Event


@dataclass
class Subscription:
    name: str
    lossless: bool
    maxsize: int
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    dropped: int = 0

    def put(self, event: Event) -> None:
        if not self.lossless and self.queue.qsize() >= self.maxsize:
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(
        self, name: str, *, lossless: bool = False, maxsize: int = 10_000
    ) -> Subscription:
        sub = Subscription(name, lossless, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self._subs:
            sub.put(event)
