"""Decoding one answer while the next request is on the wire.

A poll sends its requests one after another (one transaction in flight, as
every Modbus device accepts). Between sending a request and its answer the
driver has nothing to do, so the previous answer is decoded then, from a
callback the event loop runs during that wait, instead of after it: the
decoding costs the poll no time as long as the PLC takes longer to answer
than the driver takes to decode.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from cellctl.model import MetricValue

J = TypeVar("J")

Values = dict[str, MetricValue]


class Overlap(Generic[J]):
    """Answers waiting to be decoded into `out`; `drain()` finishes them all."""

    __slots__ = ("_decode", "_loop", "_pending", "_scheduled", "out")

    def __init__(self, decode: Callable[[J, list[int]], Values]) -> None:
        self._decode = decode
        self._loop = asyncio.get_running_loop()
        self._pending: deque[tuple[J, list[int]]] = deque()
        self._scheduled = False
        self.out: Values = {}

    def add(self, job: J, words: list[int]) -> None:
        """Decode later: on the loop's next turn, which comes while the caller awaits."""
        self._pending.append((job, words))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        self.drain()

    def drain(self) -> Values:
        """Decode whatever is still waiting, now; the values of every answer added."""
        pending, out, decode = self._pending, self.out, self._decode
        while pending:
            out.update(decode(*pending.popleft()))
        return out
