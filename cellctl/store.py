"""The SQLite journal: everything that must survive a crash.

One connection, used from one worker thread, so the event loop never waits
on disk. WAL mode; `synchronous=FULL`, so a committed transaction survives
power loss: a job is acknowledged only after `call()` of its insert returns.
The schema grows through numbered migrations in `cellctl/migrations/`
(`0001_jobs.sql`, `0002_spool.sql` …), tracked by `PRAGMA user_version`.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from cellctl.errors import CellError

T = TypeVar("T")

DEFAULT_FILE = "cellctl.db"  # the store's file name in the cell's state directory


class StoreError(CellError):
    """The store could not be opened or migrated."""


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration shipped, in order."""
    found = []
    for entry in resources.files("cellctl.migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    found.sort()
    numbers = [n for n, _, _ in found]
    if len(set(numbers)) != len(numbers):
        raise StoreError(f"two migrations share a number: {numbers}")
    return found


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database; returns the schema version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    shipped = migrations()
    newest = shipped[-1][0] if shipped else 0
    if version > newest:
        raise StoreError(
            f"the database has schema version {version}, newer than this "
            f"cellctl knows ({newest}); upgrade cellctl"
        )
    for number, name, sql in shipped:
        if number <= version:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"migration {number:04d}_{name} failed: {exc}") from exc
        version = number
    return version


def _statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return [s for s in out if s]


class Store:
    """Async front of the SQLite journal. Use as `async with Store(path) as store`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None
        self.version = 0

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._run(_connect, self.path)
            self.version = await self.call(migrate)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._run(conn.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the store's thread. Use `transaction(conn)` inside for writes."""
        conn = self._conn
        if conn is None:
            raise StoreError("store is closed")
        return await self._run(fn, conn)


class transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error). Commit means durable (synchronous=FULL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
