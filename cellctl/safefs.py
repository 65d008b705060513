"""File operations inside one folder that never follow a symbolic link.

The hot folder is writable by people and programs cellctl does not trust. Every
entry in it is reached from an open directory (`dir_fd`) one name at a time with
`O_NOFOLLOW`, so a link named `st → /var/lib/cellctl` is refused, never entered;
the real path of every opened file is checked to lie inside the folder too. The
folder itself is opened once per scan and may be a link (an admin's choice).

Deleting re-checks what is deleted: the entry is first renamed aside (atomic,
never follows a link), and only unlinked when it is still the very file that was
read (device, inode, size, mtime). These functions block: call them off the loop.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cellctl.jobs.content import escaped

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_aside = itertools.count(1)


class Unsafe(Exception):
    """An entry that is not what the hot folder may read; the message says what it is."""


@dataclass(frozen=True)
class Identity:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_file(self, other: Identity) -> bool:
        return (self.dev, self.ino) == (other.dev, other.ino)


def what_is(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


class Folder:
    """An open directory; names are looked up in it without following links."""

    def __init__(self, fd: int, path: Path, real: str) -> None:
        self.fd = fd
        self.path = path  # for messages only
        self.real = real  # the real path of the hot folder this lies in

    @classmethod
    def open_root(cls, path: Path) -> Folder:
        fd = os.open(path, _DIR_FLAGS)  # the configured folder may itself be a link
        return cls(fd, path, os.path.realpath(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def readlink(self, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError:
            return "?"

    def sub(self, name: str, create: bool = False) -> Folder:
        """The sub-folder `name`; Unsafe when it is a link or not a folder."""
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=self.fd)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = self.lstat(name)
                what = what_is(st) if st else "gone"
                raise Unsafe(f"'{escaped(name)}' is {what}, not a folder") from None
            raise
        return Folder(fd, self.path / name, self.real)

    def walk(self, relative: str) -> tuple[list[Folder], str]:
        """Open every folder on the way to `relative` without following a link; returns
        the folders opened (the last holds the entry; close all but self) and its name."""
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise Unsafe(f"'{escaped(relative)}' is not a path inside the hot folder")
        chain: list[Folder] = [self]
        try:
            for part in parts[:-1]:
                chain.append(chain[-1].sub(part))
        except BaseException:
            for f in chain[1:]:
                f.close()
            raise
        return chain, parts[-1]

    def open_file(self, name: str) -> tuple[int, os.stat_result]:
        """A regular file inside the hot folder, opened for reading without following a
        link; Unsafe otherwise. The caller closes the descriptor."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Unsafe(
                    f"'{escaped(name)}' is a symbolic link (to '{escaped(self.readlink(name))}')"
                ) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unsafe(f"'{escaped(name)}' is {what_is(st)}")
            real = os.path.realpath(f"/proc/self/fd/{fd}")  # Linux: the file's real path
            if real.startswith("/") and not real.startswith(self.real + os.sep):
                raise Unsafe(f"'{escaped(name)}' lies outside the hot folder")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def move(self, name: str, to: Folder, new_name: str) -> None:
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=to.fd)

    def unlink_if_same(self, name: str, read: Identity) -> bool:
        """Delete `name` only when it is still the file that was read, unchanged.

        The entry is renamed aside first, so that what is checked is what is deleted;
        anything else found there is put back. Returns whether it was deleted."""
        aside = f".cellctl-delete-{os.getpid()}-{next(_aside)}"
        try:
            os.rename(name, aside, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except FileNotFoundError:
            return False
        st = self.lstat(aside)
        if st is not None and stat.S_ISREG(st.st_mode) and Identity.of(st) == read:
            os.unlink(aside, dir_fd=self.fd)
            return True
        if self.lstat(name) is None:
            os.rename(aside, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        return False
