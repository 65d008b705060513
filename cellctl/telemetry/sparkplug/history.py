"""Sparkplug's store and forward on disk: the edge node's kept changes, mirrored in SQLite.

The edge node (session.py) holds the kept changes in memory and decides what is kept
and when it is forwarded; this mirrors that into the `sparkplug_history` table of the
cell's store, so that a restart while the primary host is offline loses nothing.
One writer task applies the operations in order: an insert queued before a forward
is on disk before the forward's delete, which removes exactly what was forwarded.
A store that fails (a full disk) is logged once; the memory copy goes on.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence

import structlog

from cellctl.model import Quality
from cellctl.store import Store, StoreError, transaction
from cellctl.telemetry.sparkplug.session import Change, Historical

log = structlog.get_logger("cellctl.sparkplug")

_Op = tuple[str, Historical | None]


class HistoryStore:
    def __init__(self, store: Store, limit: int) -> None:
        self._store = store
        self._limit = limit
        self._ops: asyncio.Queue[_Op] = asyncio.Queue()
        self._failing = False

    async def load(self) -> list[Historical]:
        """What a previous run kept, oldest first, one entry per device and timestamp run."""

        def read(conn: sqlite3.Connection) -> list[tuple[str | None, str, str, int, str]]:
            rows = conn.execute(
                "SELECT device, name, value, ts_ms, quality FROM sparkplug_history ORDER BY id"
            )
            return list(rows)

        try:
            rows = await self._store.call(read)
        except StoreError as exc:
            log.error("Sparkplug history could not be read", error=str(exc))
            return []
        out: list[Historical] = []
        for device, name, value, ts, quality in rows:
            change = Change(name, json.loads(value), ts, Quality(quality))
            if out and out[-1].device == device:
                out[-1] = Historical(device, (*out[-1].changes, change))
            else:
                out.append(Historical(device, (change,)))
        return out

    def added(self, entry: Historical) -> None:
        self._ops.put_nowait(("add", entry))

    def forwarded(self) -> None:
        self._ops.put_nowait(("clear", None))

    async def run(self) -> None:
        while True:
            op, entry = await self._ops.get()
            try:
                if op == "add" and entry is not None:
                    await self._store.call(self._inserter(entry))
                else:
                    await self._store.call(_clear)
                if self._failing:
                    log.warning("Sparkplug history is written again")
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.error("Sparkplug history not written; kept in memory only", error=str(exc))
                self._failing = True

    def _inserter(self, entry: Historical) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: self._insert(conn, entry.device, entry.changes)

    def _insert(
        self, conn: sqlite3.Connection, device: str | None, changes: Sequence[Change]
    ) -> None:
        with transaction(conn):
            conn.executemany(
                "INSERT INTO sparkplug_history (device, name, value, ts_ms, quality)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (device, c.name, json.dumps(c.value), c.timestamp_ms, c.quality.value)
                    for c in changes
                ],
            )
            conn.execute(
                "DELETE FROM sparkplug_history"
                " WHERE id <= (SELECT max(id) FROM sparkplug_history) - ?",
                (self._limit,),
            )


def _clear(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM sparkplug_history")
