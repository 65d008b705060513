"""A small file system the test makes and fills: a tmpfs mounted where the state goes.

As root (CI runs as root) the test mounts it with `mount -t tmpfs`. Without
root, `rerun_in_userns` runs the same test again inside `unshare -Urm` (a user
and mount namespace of its own, where it is root and may mount a tmpfs) and
passes or fails with it; only a kernel that allows no user namespaces leaves
nothing to try, and then the test fails in CI (`CI` set) and is skipped, with
the reason, elsewhere. `CELLCTL_SMALL_DISK=userns` takes that path as root too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

INNER = "CELLCTL_IN_USERNS"
CHUNK = 64 * 1024


def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def rerun_in_userns(request: pytest.FixtureRequest, tmp_path: Path) -> bool:
    """Without root: run this test again in a user and mount namespace, assert that it
    passed there, and return True (the caller returns). As root: False, run it here."""
    wanted = os.geteuid() != 0 or os.environ.get("CELLCTL_SMALL_DISK") == "userns"
    if not wanted or os.environ.get(INNER):
        return False
    unshare = shutil.which("unshare")
    if unshare is None:
        _cannot("no root and no `unshare` to make a small tmpfs with")
    probe = subprocess.run(
        [str(unshare), "-Urm", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        _cannot(f"no root, and no user namespaces here: {probe.stderr.strip()}")
    inner = subprocess.run(
        [
            str(unshare),
            "-Urm",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'userns'}",
            request.node.nodeid,
        ],
        cwd=request.config.rootpath,
        env={**os.environ, INNER: "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inner.returncode == 0 and " passed" in inner.stdout, inner.stdout + inner.stderr
    return True


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `where` (created); unmounted on exit. Needs root
    (or `rerun_in_userns` first)."""
    if os.geteuid() != 0:
        _cannot("mounting a small tmpfs needs root: call rerun_in_userns first")
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
