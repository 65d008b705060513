"""One daemon per state directory: an exclusive lock on `<state dir>/cellctl.lock`.

Two daemons on one state directory would share the store, the hot folder and
the MQTT client id, and knock each other off the broker. The lock is `flock`,
so the kernel releases it when its holder dies, even by `kill -9`: a stale
lock file never blocks a start. The file stays (deleting it would let a
third daemon lock a fresh file beside a second one still holding the old);
it holds the holder's PID for the refusal message, nothing more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from cellctl.errors import CellError

LOCK_FILE = "cellctl.lock"
# The PID is written over the same bytes every time: rewriting allocated bytes needs
# no new space, so a daemon starting on a full disk still names itself.
_PID_WIDTH = 20


class AlreadyRunning(CellError):
    """Another daemon holds the state directory's lock."""


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            where = self.path.parent.resolve()
            raise AlreadyRunning(
                f"another cellctl ({who}) is running on the state directory {where};"
                " stop it first, or give this cell its own [cell] state_dir"
            ) from None
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
            os.pwrite(fd, f"{os.getpid()}".ljust(_PID_WIDTH - 1).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None
