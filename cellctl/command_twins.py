"""One command, two deliveries: the urgent connection's copy and the main one's.

The daemon subscribes `cmd/+/+` on its main MQTT connection and, on a second
connection of its own, only the urgent commands (`URGENT_COMMANDS`), so that
an emergency stop never waits behind the large messages the broker already
queued for the main connection (docs/mqtt.md, "The urgent connection"). The
broker then delivers every urgent command on both: the first copy to arrive
is handled, its twin is dropped, so nothing is done or answered twice.

MQTT gives a message no identity across subscriptions, so copies are paired
by what they carry (topic, payload, MQTT 5 properties) and counted: a copy
arriving on one connection first cancels one copy the other connection still
owes, and otherwise is a new command, after which the other connection owes
one. Two identical commands sent back to back are therefore both handled,
once each. A connection that is down owes nothing (the broker sends it
nothing); what it owed when it went down is forgotten with it; and what is
owed expires after `window_s`, so a copy that never comes (the connection
subscribed a moment after the command was published) can hold up at most an
identical later command, until its own twin arrives.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable

# Commands the urgent connection subscribes to: an emergency stop and what stops or
# holds one device now. resume and reset start motion again: no hurry for those.
URGENT_COMMANDS = ("estop", "stop", "pause")


class Channel(enum.StrEnum):
    MAIN = "main"
    URGENT = "urgent"


def other(channel: Channel) -> Channel:
    return Channel.URGENT if channel is Channel.MAIN else Channel.MAIN


def fingerprint(
    topic: str,
    payload: bytes,
    correlation: bytes | None,
    response_topic: str | None,
    user_properties: Iterable[tuple[str, str]],
) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (
        topic.encode(),
        payload,
        b"\x00" if correlation is None else b"\x01" + correlation,
        (response_topic or "").encode(),
        repr(tuple(user_properties)).encode(),
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class Twins:
    """Pairs the two deliveries of each urgent command; `arrived` says which to handle."""

    def __init__(self, window_s: float = 120.0, max_owed: int = 10_000) -> None:
        self.window_s = window_s
        self.max_owed = max_owed
        self.up = {Channel.MAIN: False, Channel.URGENT: False}
        # Per channel: fingerprint → when each copy it still owes was first seen, oldest first.
        self._owed: dict[Channel, dict[bytes, deque[float]]] = {c: {} for c in Channel}
        # Everything owed, in arrival order, for expiry and the bound.
        self._order: deque[tuple[float, Channel, bytes]] = deque()
        self.dropped = 0  # twins dropped (for tests and the benchmark)

    def subscribed(self, channel: Channel) -> None:
        self.up[channel] = True

    def disconnected(self, channel: Channel) -> None:
        """The connection's session ended: copies it owed will never come."""
        self.up[channel] = False
        self._owed[channel].clear()

    def arrived(self, channel: Channel, key: bytes, now: float) -> bool:
        """True: a new command, handle it. False: the twin of one already handled."""
        while self._order and now - self._order[0][0] > self.window_s:
            self._forget_oldest()
        owed = self._owed[channel].get(key)
        if owed:
            owed.popleft()
            if not owed:
                del self._owed[channel][key]
            self.dropped += 1
            return False
        peer = other(channel)
        if self.up[peer]:
            if len(self._order) >= self.max_owed:
                self._forget_oldest()
            self._owed[peer].setdefault(key, deque()).append(now)
            self._order.append((now, peer, key))
        return True

    def owed(self, channel: Channel) -> int:
        return sum(len(d) for d in self._owed[channel].values())

    def _forget_oldest(self) -> None:
        # The entry may have been paired already (or its channel gone down): then the
        # copy owed for that key, if any, is younger and stays.
        at, peer, key = self._order.popleft()
        owed = self._owed[peer].get(key)
        if owed and owed[0] <= at:
            owed.popleft()
            if not owed:
                del self._owed[peer][key]
