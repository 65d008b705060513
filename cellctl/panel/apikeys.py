"""Per-user API keys for the panel, stored hashed.

A key is `ck_<id>_<secret>`: the id (8 hex digits) names it in listings and for
revocation; the secret is 32 random bytes. Only the SHA-256 of the whole key is
stored: a random key of 256 bits needs no slow hash, since guessing it is the
only attack and a stolen file reveals no key. The file is JSON, written whole to
a temporary file, fsynced and renamed, mode 0600: a crash leaves the old or the
new file, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cellctl.access import valid_user
from cellctl.errors import CellError, UsageError

PREFIX = "ck_"


class KeyFileError(CellError):
    """The key file cannot be read or written; the message names it."""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user: str
    sha256: str
    created: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The key file at `path`; every call reads it anew (the panel sees a revocation at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[KeyRecord]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            return [KeyRecord(**row) for row in data["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{self.path}: not a key file ({exc})") from None

    def add(self, user: str) -> tuple[KeyRecord, str]:
        """A new key for `user`: its record and the key itself, which is shown only now."""
        if not valid_user(user):
            raise UsageError(
                f"user name {user!r}: 1-128 characters, none of '/', '+', '#' or controls"
            )
        rows = self.records()
        taken = {r.id for r in rows}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(key_id, user, _digest(key), time.time())
        self._write([*rows, record])
        return record, key

    def revoke(self, key_id: str) -> KeyRecord:
        rows = self.records()
        gone = [r for r in rows if r.id == key_id]
        if not gone:
            known = ", ".join(r.id for r in rows) or "none"
            raise UsageError(f"no API key {key_id!r} in {self.path} (keys: {known})")
        self._write([r for r in rows if r.id != key_id])
        return gone[0]

    def verify(self, key: str) -> str | None:
        """The user of `key`, or None. Compares digests in constant time."""
        if not key.startswith(PREFIX):
            return None
        digest = _digest(key)
        user = None
        for r in self.records():
            if hmac.compare_digest(r.sha256, digest):
                user = r.user
        return user

    def _write(self, rows: list[KeyRecord]) -> None:
        body = json.dumps({"v": 1, "keys": [asdict(r) for r in rows]}, indent=2) + "\n"
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".panel-keys-", dir=folder)
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot write: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp made it 0600
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise KeyFileError(f"{self.path}: cannot write: {exc.strerror}") from None
