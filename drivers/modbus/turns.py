"""Whose turn it is on the link: one request at a time, first come first served, except
that an urgent request (an emergency stop) goes before every request still waiting.

A PLC connection carries one transaction at a time, and each polling group, the
heartbeat and the commands all queue for it. An e-stop behind that queue would
wait for every poll queued before it; here it waits only for the request already
on the wire.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    __slots__ = ("_busy", "_waiting")

    def __init__(self) -> None:
        self._busy = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """The turn now, if nobody has it or waits for it (no suspension on this path)."""
        if self._busy or self._waiting:
            return False
        self._busy = True
        return True

    async def wait(self, urgent: bool = False) -> None:
        """Wait for the turn: at the back of the queue, or at its front if urgent."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if urgent:
            self._waiting.appendleft(turn)
        else:
            self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.done()  # handed the turn as it was cancelled: pass it on
            elif turn in self._waiting:  # done() may have dropped it already, cancelled
                self._waiting.remove(turn)
            raise

    def done(self) -> None:
        """End this turn: hand it to the first still waiting, or free it."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return  # still busy: the turn was handed over
        self._busy = False
