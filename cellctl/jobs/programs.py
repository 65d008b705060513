"""Program files, stored content-addressed (sha256) under the state directory.

A file is copied to a temporary name, flushed to disk, then renamed to its
hash: a crash leaves either the whole file or none, never half of one. Storing
the same content twice is a no-op. These functions block: call them off the loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from cellctl.errors import CellError

CHUNK = 1 << 20


class ProgramMissing(CellError):
    """A stored program is gone or no longer matches its hash."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ProgramStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def put_file(self, src: Path) -> str:
        """Copy `src` in; returns its sha256. Raises OSError if `src` cannot be read."""
        self.root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with src.open("rb") as f, os.fdopen(fd, "wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            final = self.path(digest)
            if final.exists() and final.stat().st_size == tmp.stat().st_size:
                tmp.unlink()
            else:
                os.replace(tmp, final)
                _fsync_dir(self.root)
            return digest
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def put_bytes(self, data: bytes) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists() and final.stat().st_size == len(data):
            return digest
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, final)
        _fsync_dir(self.root)
        return digest

    def verify(self, sha256: str) -> Path:
        """The stored file, after checking that it exists and still has this hash."""
        path = self.path(sha256)
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise ProgramMissing(f"program {sha256[:12]}… is missing from {self.root}") from None
        except OSError as exc:
            raise ProgramMissing(f"program {sha256[:12]}… cannot be read: {exc}") from None
        if actual != sha256:
            raise ProgramMissing(
                f"program {sha256[:12]}… does not match its hash (the file has {actual[:12]}…)"
            )
        return path

    def sweep_incoming(self) -> int:
        """Remove temporary files a crash left behind; returns how many."""
        n = 0
        if self.root.is_dir():
            for p in self.root.glob(".incoming-*"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
        return n
