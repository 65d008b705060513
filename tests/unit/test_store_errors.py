"""The store's own errors: a full disk is StoreFull (never a raw SQLite error, never
masked by a failing ROLLBACK), it marks the store and clears on the next write that
succeeds; the state directory's lock names its holder (issue 17)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from cellctl.statelock import AlreadyRunning, StateLock
from cellctl.store import Store, StoreFull, transaction
from cellctl.telemetry.encoding import Kind, Outgoing
from cellctl.telemetry.spool import Spool


def insert_blob(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO command_audit (ts, command, origin, payload, outcome)"
            " VALUES (0, 'x', '{}', zeroblob(20000), 'accepted')"
        )


async def test_a_full_store_raises_store_full_and_recovers(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db") as store:
        pages = await store.call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store.call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        with pytest.raises(StoreFull, match="no space left"):
            await store.call(insert_blob)
        assert store.full
        assert not await store.call(lambda c: c.in_transaction)  # rolled back, not left open
        # Reads go on.
        assert await store.call(lambda c: c.execute("SELECT count(*) FROM jobs").fetchone())
        await store.call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        await store.call(insert_blob)
        assert not store.full
        assert store.space_problem(0) is None
        assert "min_free_mb" in (store.space_problem(1 << 62) or "")


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    with StateLock(tmp_path / "state"):
        with pytest.raises(AlreadyRunning) as err:
            StateLock(tmp_path / "state").acquire()
        assert f"(PID {os.getpid()})" in str(err.value)
        assert str((tmp_path / "state").resolve()) in str(err.value)
    with StateLock(tmp_path / "state"):  # released on exit; the file stays
        pass
    assert (tmp_path / "state" / "cellctl.lock").exists()


async def test_the_spool_counts_what_a_full_disk_cannot_keep(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db") as store:
        spool = Spool(store, commit_s=0)
        await spool.load()

        def event(source: str) -> None:
            seq = spool.next_seq(source)
            spool.add(Outgoing(f"t/{source}", bytes(3000), Kind.ALARM, qos=1), source, seq)

        await store.call(fill_up)
        for _ in range(3):
            event("a")
        await spool.flush()  # a commit the disk refuses: counted, forgotten, no exception
        assert store.full and spool.counters.dropped_disk_full == 3
        assert spool.counters.depth == 0 and spool.uncommitted_count == 0

        await store.call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        event("b")
        await spool.flush()
        assert not store.full and spool.counters.depth == 1
        seqs = await store.call(lambda c: dict(c.execute("SELECT source, seq FROM telemetry_seq")))
        # "a" had no event in the commit that worked: its number went with it all the same,
        # so a later start does not hand out a:1 … a:3 again.
        assert seqs == {"a": 3, "b": 1}
        counters = await store.call(
            lambda c: dict(c.execute("SELECT name, value FROM telemetry_counters"))
        )
        assert counters["dropped_disk_full"] == 3


def fill_up(conn: sqlite3.Connection) -> None:
    """Hold the store at its size and use up its free pages: every new page fails."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    while True:
        try:
            insert_blob(conn)
        except sqlite3.OperationalError:
            return
