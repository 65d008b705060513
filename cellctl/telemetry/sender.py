"""Sends spooled messages with QoS 1, in order, at most `window` unacknowledged at once.

Two sources feed it, in this order of precedence:

1. Committed rows: after a (re)connect, from SQLite starting at the oldest
   unacknowledged row (the backlog); once caught up, from the spool's `fresh`
   list of rows committed since.
2. Early entries: while it is connected and caught up, an entry is published
   as soon as it is added, while its commit (and fsync) runs. An event then
   reaches the broker in one loop turn instead of after the disk; the
   guarantee is unchanged, because a row is deleted only when it is both
   committed and acknowledged, and everything committed but unacknowledged is
   sent again after a reconnect or restart. (What was never committed is lost
   in a crash either way; sending it early can only help it arrive.)

Nothing newer overtakes anything older: early sending stops on disconnect and
until the backlog is drained; it opens only when no committed row waits, and
then starts with every entry not committed yet, in order. Because the send
no longer waits for the commit, a group-commit window (`spool_commit_s`)
saves fsyncs without adding latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from cellctl.telemetry.link import MqttLink
from cellctl.telemetry.spool import EARLY_MAX, Entry, Spool

log = structlog.get_logger("cellctl.mqtt.sender")

BACKLOG_READ_MAX = 1000


class SpoolSender:
    def __init__(self, spool: Spool, link: MqttLink, window: int) -> None:
        self._spool = spool
        self._link = link
        self.window = window
        self._inflight: dict[int, Entry] = {}  # mid → entry
        self._cursor = 0  # highest row id sent on this connection
        self._epoch = 0
        self._backlog = True
        self._generation = spool.fresh_generation
        self._wake = asyncio.Event()
        spool.on_commit = self._wake.set
        spool.on_add = self._wake.set
        self.sent = 0
        self.sent_early = 0
        self.acked = 0
        self.refused = 0

    def connected(self) -> None:
        # A new connection starts again at the oldest unacknowledged row.
        self._inflight.clear()
        self._cursor = 0
        self._backlog = True
        self._epoch += 1
        self._close_early()
        self._wake.set()

    def disconnected(self) -> None:
        self._inflight.clear()
        self._close_early()
        self._wake.set()

    def on_ack(self, mid: int, ok: bool) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if not ok:
            # The broker refused it (an ACL): resending cannot help; say so loudly.
            self.refused += 1
            log.error("broker refused a spooled message; check the broker's ACL", row=entry.row_id)
        self.acked += 1
        if entry.row_id:
            self._spool.acked(entry.row_id)
        else:
            entry.acked = True  # the spool deletes its row right after the commit
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._link.is_connected:
                await self._link.connected.wait()
                continue
            room = self.window - len(self._inflight)
            if room <= 0:
                await self._wait()
                continue
            if self._spool.fresh_generation != self._generation:
                self._generation = self._spool.fresh_generation
                self._backlog = True
                self._close_early()
            rows: Sequence[Entry]
            if self._backlog:
                epoch = self._epoch
                rows = await self._spool.read_after(self._cursor, min(room, BACKLOG_READ_MAX))
                if epoch != self._epoch:
                    continue  # reconnected meanwhile: start again from the oldest row
                if not rows:
                    self._backlog = False
                    continue
            else:
                rows = self._take_fresh(room)
                if not rows:
                    if not self._spool.early_open:
                        self._open_early()
                    rows = self._take_early(room)
                if not rows:
                    await self._wait()
                    continue
            self._send(rows)

    def _send(self, rows: Sequence[Entry]) -> None:
        for entry in rows:
            mid = self._link.publish(entry.out)
            if mid is None:
                return  # connection went away; `connected()` restarts from the oldest
            self._inflight[mid] = entry
            entry.sent_epoch = self._epoch
            if entry.row_id:
                self._cursor = max(self._cursor, entry.row_id)
            else:
                self.sent_early += 1
            self.sent += 1

    def _take_fresh(self, room: int) -> list[Entry]:
        fresh = self._spool.fresh
        out: list[Entry] = []
        while fresh and len(out) < room:
            entry = fresh.popleft()
            if entry.sent_epoch == self._epoch or entry.acked:
                self._cursor = max(self._cursor, entry.row_id)  # it went out early
            elif entry.row_id > self._cursor:
                out.append(entry)
        return out

    def _open_early(self) -> None:
        """Caught up on committed rows: from here on, send entries as they are added.

        Everything not committed yet goes first, in order, so nothing added later
        can overtake it."""
        if self._spool.uncommitted_count >= EARLY_MAX:
            return  # a flood: the durable path, in commit-sized groups, is cheaper
        self._spool.early.clear()
        self._spool.early.extend(self._spool.uncommitted())
        self._spool.early_open = True

    def _take_early(self, room: int) -> list[Entry]:
        early = self._spool.early
        out: list[Entry] = []
        while early and len(out) < room:
            entry = early.popleft()
            # Committed meanwhile: `fresh` (drained just before) has sent it. Acknowledged
            # on an earlier connection: the broker has it.
            if not entry.row_id and entry.sent_epoch != self._epoch and not entry.acked:
                out.append(entry)
        return out

    def _close_early(self) -> None:
        self._spool.early_open = False
        self._spool.early.clear()

    async def _wait(self) -> None:
        # No await since the caller's check, so nothing can have set it in between.
        self._wake.clear()
        await self._wake.wait()
