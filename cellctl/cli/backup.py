"""`cellctl backup CONFIG FILE`: a consistent copy of the cell's store, daemon running or not.

SQLite's online backup copies the store in one step inside one read
transaction: with WAL the daemon keeps writing meanwhile, and the copy is the
store as of one committed transaction (never half of one). The copy is
written beside FILE, checked with `PRAGMA integrity_check`, flushed to disk
and only then renamed to FILE, so FILE is either a whole, checked copy or
absent. An existing FILE is never overwritten.

To restore: stop the daemon, copy FILE to `<state dir>/cellctl.db` (removing
any `cellctl.db-wal` and `cellctl.db-shm` beside it), start the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from cellctl.cli.common import add_config, add_json, json_mode, print_json
from cellctl.config import load
from cellctl.errors import CellError, UsageError
from cellctl.store import DEFAULT_FILE, translate

EXIT_OK = 0


def backup(src: Path, dest: Path) -> int:
    """Copy the store `src` to `dest` (which must not exist); returns its size in bytes.
    Raises CellError with the reason."""
    if dest.exists():
        raise UsageError(f"{dest} exists; name a new file (a backup never overwrites one)")
    if not src.is_file():
        raise CellError(f"no store at {src}: has the daemon run with this config?")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent} is not a directory")
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        # mode=rw: never create an empty store where the daemon's should be.
        source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            tmp.unlink(missing_ok=True)
            target = sqlite3.connect(tmp)
            try:
                # pages=-1: one step, one read transaction, one consistent snapshot (a
                # stepwise copy restarts whenever the daemon writes, and may never end).
                source.backup(target, pages=-1)
                problems = [str(r[0]) for r in target.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise CellError(
                        f"the copy of {src} fails integrity_check ({'; '.join(problems[:3])});"
                        " the store itself may be damaged: stop the daemon and start it, its"
                        " start checks the store"
                    )
            finally:
                target.close()
        finally:
            source.close()
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        mine = translate(exc, src)
        raise CellError(f"backup of {src} failed: {mine or exc}") from None
    except OSError as exc:
        raise CellError(f"backup to {dest} failed: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return dest.stat().st_size


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_backup(args: argparse.Namespace) -> int:
    cell = load(args.config)
    src = cell.state_dir / DEFAULT_FILE
    size = backup(src, Path(args.file))
    if json_mode():
        print_json({"store": str(src), "file": args.file, "bytes": size, "integrity_check": "ok"})
    else:
        print(f"backup of {src} written to {args.file} ({size} bytes, integrity_check ok)")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "backup", help="copy the cell's store consistently, also while the daemon runs"
    )
    add_config(p, legacy=True)
    add_json(p)
    p.add_argument("file", help="the copy to write; must not exist yet")
    p.set_defaults(func=cmd_backup)
