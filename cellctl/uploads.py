"""Chunked, content-addressed program uploads (`put_program`, docs/mqtt.md).

A program larger than one command message travels as chunks, each naming the
whole file's sha256 and size and its own byte offset. Chunks are written
where they belong in a partial file on disk (`<state_dir>/uploads/`), so
memory holds one chunk at a time whatever the program's size; the ranges
received are kept in memory. Chunks may come in any order and be resent.
Once every byte is there the file is hashed: a match is moved into the
program store (`<state_dir>/programs/<sha256>`, where `submit` finds it as
`sha256:<hex>`), a mismatch is discarded and refused.

Partial uploads are bounded (how many at once, per user, their bytes on
disk) and expire when untouched; a restart discards them (the client asks
again and is told what is missing: everything). One worker (the uploads
lane) calls `put`, so nothing here races.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cellctl.command_limits import CommandsSection
from cellctl.errors import CellError

log = structlog.get_logger("cellctl.uploads")

HASH_CHUNK = 1 << 20
MISSING_SHOWN = 64  # gaps listed in a reply at most; the client sends those, then asks again


class UploadRefused(CellError):
    """A chunk that cannot be taken; the message is the reply's reason."""


def add_range(ranges: list[list[int]], start: int, end: int) -> None:
    """Merge [start, end) into sorted, disjoint, non-touching `ranges`, in place."""
    if start >= end:
        return
    out: list[list[int]] = []
    placed = False
    for s, e in ranges:
        if e < start:
            out.append([s, e])
        elif end < s:
            if not placed:
                out.append([start, end])
                placed = True
            out.append([s, e])
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append([start, end])
    out.sort()
    ranges[:] = out


def missing(ranges: list[list[int]], size: int, limit: int = MISSING_SHOWN) -> list[list[int]]:
    gaps: list[list[int]] = []
    at = 0
    for s, e in ranges:
        if s > at:
            gaps.append([at, s])
        at = max(at, e)
    if at < size:
        gaps.append([at, size])
    return gaps[:limit]


def held(ranges: list[list[int]]) -> int:
    return sum(e - s for s, e in ranges)


@dataclass
class Partial:
    user: str
    sha256: str
    size: int
    path: Path
    touched: float
    name: str = ""
    ranges: list[list[int]] = field(default_factory=list)


class ProgramUploads:
    def __init__(
        self,
        programs: Path,
        partial_dir: Path,
        limits: CommandsSection,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.programs = programs
        self.partial_dir = partial_dir
        self.limits = limits
        self.clock = clock
        self._open: dict[tuple[str, str], Partial] = {}

    def discard_leftovers(self) -> int:
        """Blocking: partial files a previous run left (their ranges were in its memory)."""
        n = 0
        if self.partial_dir.is_dir():
            for p in self.partial_dir.glob("*.part"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
        return n

    @property
    def open_uploads(self) -> int:
        return len(self._open)

    def expire(self) -> int:
        """Drop partial uploads untouched for `upload_expiry_s`; returns how many."""
        now = self.clock()
        old = [k for k, p in self._open.items() if now - p.touched > self.limits.upload_expiry_s]
        for key in old:
            part = self._open.pop(key)
            _unlink(part.path)
            log.info("partial upload expired", user=part.user, sha256=part.sha256[:12])
        return len(old)

    async def put(
        self, user: str, sha256: str, size: int, offset: int, data: bytes, name: str = ""
    ) -> dict[str, Any]:
        program = f"sha256:{sha256}"
        stored = self.programs / sha256
        if await asyncio.to_thread(_has_size, stored, size):
            self._drop(user, sha256)
            return {"program": program, "received": size, "complete": True, "missing": []}
        if size > self.limits.upload_max_bytes:
            raise UploadRefused(
                f"program of {size} bytes is larger than the {self.limits.upload_max_bytes} "
                "allowed ([commands] upload_max_bytes)"
            )
        if offset + len(data) > size:
            raise UploadRefused(
                f"chunk at offset {offset} of {len(data)} bytes ends past the file's size {size}"
            )
        if not data and size > 0:
            raise UploadRefused("empty chunk: data must hold at least one byte")
        self.expire()
        part = self._open.get((user, sha256))
        if part is None:
            part = await self._start(user, sha256, size, name)
        elif part.size != size:
            raise UploadRefused(
                f"size {size} differs from the upload of {program} in progress ({part.size} "
                "bytes); finish that one or let it expire"
            )
        part.touched = self.clock()
        if data:
            await asyncio.to_thread(_write_at, part.path, offset, data)
        add_range(part.ranges, offset, offset + len(data))
        got = held(part.ranges)
        if got < size:
            return {
                "program": program,
                "received": got,
                "complete": False,
                "missing": missing(part.ranges, size),
            }
        del self._open[(user, sha256)]
        actual = await asyncio.to_thread(_store, part.path, stored, sha256)
        if actual != sha256:
            raise UploadRefused(
                f"sha256 mismatch: the {size} bytes received hash to {actual}, not {sha256}; "
                "the upload was discarded, send it again"
            )
        log.info("program uploaded", user=user, sha256=sha256[:12], bytes=size, name=name)
        return {"program": program, "received": size, "complete": True, "missing": []}

    async def _start(self, user: str, sha256: str, size: int, name: str) -> Partial:
        lim = self.limits
        if len(self._open) >= lim.uploads_open_max:
            raise UploadRefused(
                f"busy: {len(self._open)} uploads are in progress, the most allowed "
                "([commands] uploads_open_max); try again later"
            )
        mine = sum(1 for u, _ in self._open if u == user)
        if mine >= lim.uploads_open_per_user:
            raise UploadRefused(
                f"user {user!r} has {mine} uploads in progress, the most allowed per user "
                "([commands] uploads_open_per_user); finish one or let it expire"
            )
        on_disk = sum(p.size for p in self._open.values())
        if on_disk + size > lim.uploads_disk_max_bytes:
            raise UploadRefused(
                f"busy: uploads in progress hold {on_disk} bytes; {size} more would pass the "
                f"{lim.uploads_disk_max_bytes} allowed ([commands] uploads_disk_max_bytes)"
            )
        tag = hashlib.sha256(user.encode()).hexdigest()[:16]
        path = self.partial_dir / f"{sha256}-{tag}.part"
        await asyncio.to_thread(_create, path, size)
        part = Partial(user, sha256, size, path, self.clock(), name)
        self._open[(user, sha256)] = part
        return part

    def _drop(self, user: str, sha256: str) -> None:
        part = self._open.pop((user, sha256), None)
        if part is not None:
            _unlink(part.path)


# --- blocking helpers (run in a thread) ---------------------------------------


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _create(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)  # sparse: the disk fills as chunks arrive


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    finally:
        os.close(fd)


def _store(part: Path, final: Path, sha256: str) -> str:
    """Hash the partial file; on a match move it into the program store, else delete it."""
    h = hashlib.sha256()
    try:
        with part.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
            os.fsync(f.fileno())
        actual = h.hexdigest()
        if actual == sha256:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return actual
    finally:
        _unlink(part)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
