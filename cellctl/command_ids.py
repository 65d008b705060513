"""Idempotent commands: the first reply to `(user, id)` is kept and answers every replay.

A state-changing command that carries an `id` is looked up before it is
carried out; a replay from the same user within the retention (at least
24 h) gets the first reply again and changes nothing. What is kept is the
reply of a command that was carried out or refused for what it asked
(unknown job, wrong state …): a refusal that says "try again" (busy, rate,
access, a store error) is not kept, so the retry is carried out.

Not kept: `estop` (acted on every time), `jobs` (a query) and `put_program`
(its chunks are idempotent by themselves). The reply is written after the
command's own commit: a crash between the two forgets the id, and the replay
is carried out again — harmless for the commands this covers (submit is
idempotent by job id, cancel of a cancelled job changes nothing).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from cellctl.store import Store, transaction

NOT_KEPT = frozenset({"estop", "jobs", "programs", "put_program"})
PRUNE_EVERY_S = 600.0


@dataclass(frozen=True)
class KeptReply:
    command: str
    outcome: str
    reason: str
    result: Any


class CommandIds:
    def __init__(self, store: Store, retention_s: float) -> None:
        self.store = store
        self.retention_s = retention_s
        self._pruned_at = 0.0

    @staticmethod
    def applies(command: str, user: str | None, request_id: str | None) -> bool:
        return command not in NOT_KEPT and user is not None and bool(request_id)

    async def find(self, user: str, request_id: str) -> KeptReply | None:
        cutoff = time.time() - self.retention_s

        def read(conn: sqlite3.Connection) -> KeptReply | None:
            row = conn.execute(
                "SELECT command, outcome, reason, result FROM command_ids"
                " WHERE user = ? AND request_id = ? AND ts >= ?",
                (user, request_id, cutoff),
            ).fetchone()
            if row is None:
                return None
            result = json.loads(row[3]) if row[3] is not None else None
            return KeptReply(row[0], row[1], row[2], result)

        return await self.store.call(read)

    async def keep(
        self, user: str, request_id: str, command: str, outcome: str, reason: str, result: Any
    ) -> None:
        now = time.time()
        prune = now - self._pruned_at > PRUNE_EVERY_S
        if prune:
            self._pruned_at = now
        cutoff = now - self.retention_s
        body = None if result is None else json.dumps(result, default=str)

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if prune:
                    conn.execute("DELETE FROM command_ids WHERE ts < ?", (cutoff,))
                # REPLACE: a row past the retention may still be there until the next prune.
                conn.execute(
                    "INSERT OR REPLACE INTO command_ids"
                    " (user, request_id, command, ts, outcome, reason, result)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user, request_id, command, now, outcome, reason, body),
                )

        await self.store.call(write)
