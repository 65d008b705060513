"""Store-and-forward spool for QoS 1 messages, in the SQLite store.

Events (state changes, alarms, operator requests, job/step events, audit) are
added here, given their per-source sequence number, and committed in groups:
whatever arrives within `commit_s` of the first pending message shares one
transaction (one fsync; with `commit_s = 0` the first is committed at once and
what arrives during its fsync shares the next). The sender does not wait for
the commit (cellctl/telemetry/sender.py), so the window saves fsyncs, which an
edge PC's flash storage counts, without adding latency.
A row is deleted once it is both committed and acknowledged (PUBACK).
After a reconnect or a restart the sender starts again from the oldest row,
so everything goes out in order; a broker that had already taken a message
before the link broke gets it again, which is why every event carries `seq`.

The spool is bounded by `max_rows`: past it the oldest QoS 1 samples are
deleted; events are never dropped (the spool then grows past its bound and
says so in the log). Drops are counted here and published on the spool topic.

A full disk (the store raises StoreFull) is the one case where events are
lost: the spool stops growing, the rows of a commit that found no space are
counted in `dropped_disk_full` (published on the spool topic) and forgotten.
Those entries still went to the broker if it was connected and the sender
was caught up at the time (the early path), but they are not kept for a
reconnect or a restart. While the disk stays full a commit is tried at most
once per `FULL_RETRY_S`; the first that succeeds ends it (see docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from cellctl.store import Store, StoreFull, transaction
from cellctl.telemetry.encoding import Kind, Outgoing

log = structlog.get_logger("cellctl.mqtt.spool")

# Committed rows kept in memory for the sender; past this it reads from SQLite.
FRESH_MAX = 20_000
# Uncommitted entries offered to the sender early; past this they wait for their commit.
EARLY_MAX = 10_000
# While the disk is full, one commit attempt per this many seconds (a failed one costs
# little, but nothing is gained by trying it for every event).
FULL_RETRY_S = 1.0
# Deletes alone wait this long for new rows to share their commit (one fsync for both);
# they never wait for ever, or delivered rows would stay (and go out again after a restart).
DELETE_WINDOW_S = 0.5


@dataclass(slots=True)
class Entry:
    """One spooled message. `row_id` is 0 until its row is committed."""

    out: Outgoing
    source: str | None = None
    seq: int | None = None
    row_id: int = 0
    acked: bool = False  # the broker took it before its row was committed
    sent_epoch: int = -1  # the sender's connection epoch it was last sent in


@dataclass
class SpoolCounters:
    depth: int = 0
    dropped_samples: int = 0  # QoS 1 samples deleted because the spool was full
    dropped_offline: int = 0  # QoS 0 samples not sent because the broker was unreachable
    dropped_disk_full: int = 0  # entries not kept because the disk was full
    committed: int = 0
    commits: int = 0


@dataclass
class _Batch:
    rows: list[Entry] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    offline_drops: int = 0


class Spool:
    def __init__(self, store: Store, max_rows: int = 100_000, commit_s: float = 0.02) -> None:
        self._store = store
        self.max_rows = max_rows
        self.commit_s = commit_s
        self.counters = SpoolCounters()
        self._seq: dict[str, int] = {}
        self._batch = _Batch()
        self._wake = asyncio.Event()  # rows to commit
        self._work = asyncio.Event()  # rows, or deletes, to commit
        self._over_bound_logged = False
        self._full_logged_at = -1  # dropped_disk_full when the last commit failed
        self._pending_seqs: dict[str, int] = {}
        self._committing: list[Entry] = []
        # Rows committed since the sender last read SQLite (ids ascending).
        self.fresh: deque[Entry] = deque()
        self.fresh_generation = 0
        # Entries added while the sender is caught up, before their commit: the sender
        # may publish them at once (see cellctl/telemetry/sender.py).
        self.early: deque[Entry] = deque()
        self.early_open = False
        # Called after each commit that added rows, and after each add (the sender's wake-up).
        self.on_commit: Callable[[], None] = lambda: None
        self.on_add: Callable[[], None] = lambda: None

    async def load(self) -> None:
        def read(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int], int]:
            seqs = {r[0]: r[1] for r in conn.execute("SELECT source, seq FROM telemetry_seq")}
            counters = {
                r[0]: r[1] for r in conn.execute("SELECT name, value FROM telemetry_counters")
            }
            depth = conn.execute("SELECT count(*) FROM telemetry_spool").fetchone()[0]
            return seqs, counters, int(depth)

        seqs, counters, depth = await self._store.call(read)
        self._seq = seqs
        self.counters.depth = depth
        self.counters.dropped_samples = counters.get("dropped_samples", 0)
        self.counters.dropped_offline = counters.get("dropped_offline", 0)
        self.counters.dropped_disk_full = counters.get("dropped_disk_full", 0)
        if depth:
            log.info("spool holds messages from before; they go out first", depth=depth)

    # --- called from the event loop, never blocks --------------------------

    def next_seq(self, source: str) -> int:
        last = self._seq.get(source)
        if last is None:
            # A device stream ("<device>/state") continues its device's count from before
            # seq counted per stream, so no reader sees numbers start again.
            device, sep, _ = source.partition("/")
            last = self._seq.get(device, 0) if sep else 0
        seq = last + 1
        self._seq[source] = seq
        return seq

    def last_seq(self, source: str) -> int:
        return self._seq.get(source, 0)

    def add(self, out: Outgoing, source: str | None = None, seq: int | None = None) -> None:
        entry = Entry(out, source, seq)
        self._batch.rows.append(entry)
        self._wake.set()
        self._work.set()
        if self.early_open:
            if len(self.early) < EARLY_MAX:
                self.early.append(entry)
                self.on_add()
            else:
                # Skipping one would let the next overtake it: close until caught up.
                self.early_open = False

    def acked(self, row_id: int) -> None:
        # Deletes ride on the next commit of new rows when one comes within
        # DELETE_WINDOW_S (fewer fsyncs), else they are committed alone. A row
        # acknowledged but not yet deleted when the daemon dies is sent again: a
        # duplicate, which `seq` lets readers drop.
        self._batch.acked.append(row_id)
        self._work.set()

    def dropped_offline(self, n: int) -> None:
        self.counters.dropped_offline += n
        self._batch.offline_drops += n

    @property
    def uncommitted_count(self) -> int:
        return len(self._committing) + len(self._batch.rows)

    def uncommitted(self) -> list[Entry]:
        """Entries added but not yet committed, in order, the commit under way included."""
        return [*self._committing, *self._batch.rows]

    # --- the writer --------------------------------------------------------

    async def run(self) -> None:
        """Group-commit loop; runs until cancelled, then commits what is pending."""
        try:
            while True:
                await self._work.wait()
                if self._store.full:
                    await asyncio.sleep(FULL_RETRY_S)
                    await self.flush()
                    continue
                if not self._batch.rows:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DELETE_WINDOW_S):
                            await self._wake.wait()
                if self._batch.rows and self.commit_s:
                    await asyncio.sleep(self.commit_s)  # the group-commit window
                await self.flush()
        finally:
            if self._batch.rows or self._batch.acked:
                await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        self._work.clear()
        batch, self._batch = self._batch, _Batch()
        if not (batch.rows or batch.acked or batch.offline_drops):
            return
        seqs = {
            **self._pending_seqs,  # from commits the disk refused: written with this one
            **{p.source: p.seq for p in batch.rows if p.source is not None and p.seq is not None},
        }
        counters = {
            "dropped_offline": self.counters.dropped_offline,
            "dropped_disk_full": self.counters.dropped_disk_full,
        }
        max_rows = self.max_rows
        depth_before = self.counters.depth

        def commit(conn: sqlite3.Connection) -> tuple[list[int], int, int]:
            ids: list[int] = []
            with transaction(conn):
                if batch.acked:
                    before = conn.total_changes
                    conn.executemany(
                        "DELETE FROM telemetry_spool WHERE id = ?", [(i,) for i in batch.acked]
                    )
                    deleted = conn.total_changes - before
                else:
                    deleted = 0
                for p in batch.rows:
                    o = p.out
                    cur = conn.execute(
                        "INSERT INTO telemetry_spool (topic, payload, qos, retain, kind, is_event)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (o.topic, o.payload, o.qos, int(o.retain), o.kind.value, o.kind.is_event),
                    )
                    ids.append(int(cur.lastrowid or 0))
                if seqs:
                    conn.executemany(
                        "INSERT INTO telemetry_seq (source, seq) VALUES (?, ?)"
                        " ON CONFLICT(source) DO UPDATE SET seq = excluded.seq",
                        list(seqs.items()),
                    )
                trimmed = 0
                if ids:
                    # The depth is kept in memory: counting rows on every commit would
                    # cost a table scan per fsync exactly when an outage filled the spool.
                    over = depth_before + len(ids) - deleted - max_rows
                    if over > 0:
                        cur = conn.execute(
                            "DELETE FROM telemetry_spool WHERE id IN (SELECT id FROM"
                            " telemetry_spool WHERE is_event = 0 ORDER BY id LIMIT ?)",
                            (over,),
                        )
                        trimmed = cur.rowcount
                        conn.execute(
                            "INSERT INTO telemetry_counters (name, value)"
                            " VALUES ('dropped_samples', ?) ON CONFLICT(name)"
                            " DO UPDATE SET value = value + excluded.value",
                            (trimmed,),
                        )
                conn.executemany(
                    "INSERT INTO telemetry_counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    list(counters.items()),
                )
            return ids, deleted, trimmed

        self._committing = batch.rows
        try:
            ids, deleted, trimmed = await self._store.call(commit)
        except StoreFull:
            self._pending_seqs = seqs
            self._not_kept(batch)
            return
        finally:
            self._committing = []
        self._pending_seqs = {}
        c = self.counters
        if self._full_logged_at >= 0:
            log.warning("the spool keeps messages again", dropped_disk_full=c.dropped_disk_full)
            self._full_logged_at = -1
        c.depth += len(ids) - deleted - trimmed
        c.dropped_samples += trimmed
        c.committed += len(ids)
        c.commits += 1
        if trimmed:
            log.warning("spool full: oldest samples dropped", dropped=trimmed, depth=c.depth)
        if c.depth > self.max_rows and not self._over_bound_logged:
            log.error(
                "spool holds more events than its bound; events are never dropped",
                depth=c.depth,
                bound=self.max_rows,
            )
            self._over_bound_logged = True
        elif c.depth <= self.max_rows:
            self._over_bound_logged = False
        if ids:
            for entry, row_id in zip(batch.rows, ids, strict=True):
                entry.row_id = row_id
                if entry.acked:
                    self.acked(row_id)  # sent early and already acknowledged
            self.fresh.extend(batch.rows)
            if len(self.fresh) > FRESH_MAX:
                self.fresh.clear()
                self.fresh_generation += 1
            self.on_commit()

    def _not_kept(self, batch: _Batch) -> None:
        """A commit found the disk full: its rows are counted and forgotten (the sender
        may have sent them already); its deletes wait for the next commit."""
        self._batch.acked[:0] = batch.acked
        if batch.acked:
            self._work.set()  # tried again after FULL_RETRY_S
        if not batch.rows:
            return
        first = self._full_logged_at < 0
        self.counters.dropped_disk_full += len(batch.rows)
        if first:
            log.error(
                "disk full: the spool cannot keep new messages; they go out only while"
                " the broker is connected, and are counted in dropped_disk_full",
                lost=len(batch.rows),
            )
        self._full_logged_at = self.counters.dropped_disk_full

    async def read_after(self, row_id: int, limit: int) -> list[Entry]:
        def read(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(
                "SELECT id, topic, payload, qos, retain, kind FROM telemetry_spool"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (row_id, limit),
            ).fetchall()
            return [
                Entry(
                    Outgoing(r[1], bytes(r[2]), Kind(r[5]), int(r[3]), bool(r[4])),
                    row_id=int(r[0]),
                )
                for r in rows
            ]

        return await self._store.call(read)
