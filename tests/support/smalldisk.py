"""A small file system the test makes and fills: a tmpfs mounted where the state goes.

CI runs as root, so `mount -t tmpfs` works there. Without root the test cannot
make one here and says so: it fails in CI (`CI` set), and is skipped, with the
reason, on a developer's machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 64 * 1024


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `where` (created); unmounted on exit."""
    if os.geteuid() != 0:
        reason = "mounting a small tmpfs needs root (CI runs as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=10)


def fill(where: Path) -> Path:
    """Write a filler file in `where` until the disk is full; returns it (delete it to
    give the space back)."""
    filler = where / "filler"
    block = b"\0" * CHUNK
    with filler.open("ab", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last partial chunk: byte by byte is too slow; halve until nothing fits.
        size = CHUNK // 2
        while size:
            try:
                f.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    return filler
