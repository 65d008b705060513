"""The SQLite journal: everything that must survive a crash.

One connection, used from one worker thread, so the event loop never waits
on disk. WAL mode; `synchronous=FULL`, so a committed transaction survives
power loss: a job is acknowledged only after `call()` of its insert returns.
The schema grows through numbered migrations in `cellctl/migrations/`
(`0001_jobs.sql`, `0002_spool.sql` …), tracked by `PRAGMA user_version`.

A full disk is not a crash: a write that finds no space raises `StoreFull`
(a `StoreError`), marks the store `full` until a later write succeeds, and the
caller decides what it can still do without it (see docs/jobs.md, "When the
disk is full"). The daemon opens the store with `check=True`: `PRAGMA
quick_check` before anything else, and a damaged file is moved aside (never
deleted) with one error that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import structlog

from cellctl.errors import CellError

log = structlog.get_logger("cellctl.store")

T = TypeVar("T")

DEFAULT_FILE = "cellctl.db"  # the store's file name in the cell's state directory


class StoreError(CellError):
    """The store could not be opened, migrated, read or written."""


class StoreFull(StoreError):
    """A write found no space on the disk holding the store; nothing of it was kept."""


class StoreDamaged(StoreError):
    """The store's file failed its integrity check (or SQLite found it malformed)."""


# SQLite reports a full disk as SQLITE_FULL, but a write that fails while growing the
# WAL or its shared-memory index can surface as an I/O error instead.
_IOERR = sqlite3.SQLITE_IOERR
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
# An I/O error with less than this free counts as "full" (a real I/O fault has room).
_IOERR_FULL_BELOW = 1 << 20


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `directory`."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def translate(exc: BaseException, path: Path) -> StoreError | None:
    """Our error for a foreign one raised by SQLite or the OS, or None to let it pass."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StoreFull(f"no space left on the disk holding {path}")
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StoreFull(f"no space left on the disk holding {path} ({exc})")
    if code is not None and code & 0xFF == _IOERR:
        with contextlib.suppress(OSError):
            if free_bytes(path.parent) < _IOERR_FULL_BELOW:
                return StoreFull(f"no space left on the disk holding {path} ({exc})")
    if code is not None and code & 0xFF in _DAMAGED:
        return StoreDamaged(damaged_message(path, str(exc)))
    return None


def damaged_message(path: Path, problem: str, aside: Path | None = None) -> str:
    where = (
        f" It was moved aside to {aside} (not deleted)."
        if aside is not None
        else " Stop the daemon: its next start checks the file and moves it aside."
    )
    return (
        f"the store {path} is damaged ({problem}).{where} To go on: copy a backup made"
        f" with `cellctl backup` to {path} and start again, or start again with an empty"
        f" store (`sqlite3 DAMAGED .recover` may salvage rows from the damaged file)."
    )


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


def conn_path(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row is not None else ""


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
            _rollback(conn)
            if translate(exc, Path(conn_path(conn))) is not None:
                raise
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


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None for a sound file, else SQLite's first complaint."""
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows)


def move_aside(path: Path) -> Path:
    """Rename the database (and its WAL and shared-memory files, which hold committed
    transactions too) to `<name>.damaged-<UTC time>`; returns the new database path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.damaged-{stamp}.{n}")
        n += 1
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    return aside


def _check_or_move_aside(path: Path) -> None:
    """Blocking: quick_check the file; a damaged one is moved aside and reported."""
    if not path.exists():
        return
    # Read-only: the last connection to close a WAL store checkpoints it, and that
    # would write into a damaged file that is to be kept as it was found.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
        problem = quick_check(conn)
        conn.close()
    except sqlite3.OperationalError:  # e.g. a WAL without its index: read-write then
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            problem = quick_check(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from None
    if problem is not None:
        aside = move_aside(path)
        raise StoreDamaged(damaged_message(path, f"quick_check: {problem}", aside))


class Store:
    """Async front of the SQLite journal. Use as `async with Store(path) as store`.

    `check=True` (the daemon, which holds the state directory's lock): quick_check
    the file before using it; a damaged file is moved aside and StoreDamaged raised."""

    def __init__(self, path: Path, *, check: bool = False) -> None:
        self.path = path
        self.check = check
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None
        self.version = 0
        # Set by a write that found no space; cleared by the next write that succeeds.
        self.full = False
        self.full_since: float | None = None
        self.full_errors = 0

    async def __aenter__(self) -> Self:
        try:
            if self.check:
                await self._run(_check_or_move_aside, self.path)
            self._conn = await self._run(_connect, self.path)
            self.version = await self.call(migrate)
        except StoreError:
            await self._give_up()
            raise
        except (sqlite3.Error, OSError) as exc:
            await self._give_up()
            mine = translate(exc, self.path)
            if mine is not None:
                raise mine from exc
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        return self

    async def _give_up(self) -> None:
        # A failed __aenter__ gets no __aexit__: close and stop the thread here.
        await self._close()
        self._pool.shutdown(wait=True)

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._run(conn.close)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the store's thread. Use `transaction(conn)` inside for writes.

        A full disk raises StoreFull, a damaged file StoreDamaged (both StoreError)."""
        conn = self._conn
        if conn is None:
            raise StoreError("store is closed")
        before = conn.total_changes
        try:
            result = await self._run(fn, conn)
        except (sqlite3.Error, OSError) as exc:
            mine = translate(exc, self.path)
            if mine is None:
                raise
            if isinstance(mine, StoreFull):
                self._mark_full()
            raise mine from exc
        if self.full and conn.total_changes != before:
            self._mark_writable()
        return result

    def _mark_full(self) -> None:
        self.full_errors += 1
        if not self.full:
            self.full = True
            self.full_since = time.time()
            log.error("store: a write found the disk full", store=str(self.path))

    def _mark_writable(self) -> None:
        log.warning(
            "store: writes succeed again",
            store=str(self.path),
            failed_writes=self.full_errors,
            full_for_s=round(time.time() - (self.full_since or time.time()), 1),
        )
        self.full = False
        self.full_since = None
        self.full_errors = 0

    def free_bytes(self) -> int:
        return free_bytes(self.path.parent)

    def space_problem(self, floor_bytes: int) -> str | None:
        """Why new work should be refused for lack of disk space, or None."""
        try:
            free = self.free_bytes()
        except OSError as exc:
            return f"cannot measure free space for {self.path}: {exc.strerror}"
        if free < floor_bytes:
            return (
                f"the disk holding {self.path.parent} has {free / 1e6:.1f} MB free, below"
                f" the floor of {floor_bytes / 1e6:.1f} MB ([store] min_free_mb); free"
                " some space and send it again"
            )
        if self.full:
            return f"the disk holding {self.path.parent} is full; free some space and send it again"
        return None


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
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                _rollback(self._conn)  # a failed COMMIT (SQLITE_FULL) may leave it open
                raise
            return
        _rollback(self._conn)


def _rollback(conn: sqlite3.Connection) -> None:
    # After SQLITE_FULL (and some I/O errors) SQLite may have rolled back already;
    # a ROLLBACK then raises and would hide the error that matters.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
