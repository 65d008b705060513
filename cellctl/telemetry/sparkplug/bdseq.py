"""The `bdSeq` of the last MQTT CONNECT, kept in the state directory across restarts.

3.0 (message-flow-edge-node-birth-publish-will-message-payload-bdSeq): every CONNECT's
will carries the previous CONNECT's bdSeq + 1, 255 wrapping to 0. A host application
uses it to tell a stale will from the current session's, so a restart must not start
again at 0: the value is written (atomically, fsynced) before the CONNECT that uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from cellctl.telemetry.sparkplug.session import BDSEQ_MODULO

log = structlog.get_logger("cellctl.sparkplug")

FILE = "sparkplug-bdseq"


class BdSeqStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE
        self.last: int | None = self._read()

    def _read(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "cannot read the last bdSeq; starting at 0", path=str(self.path), error=exc.strerror
            )
            return None
        try:
            value = int(text)
        except ValueError:
            log.warning("the last bdSeq is not a number; starting at 0", path=str(self.path))
            return None
        return value % BDSEQ_MODULO

    def next(self) -> int:
        """The bdSeq of the next CONNECT, recorded before it is used."""
        value = 0 if self.last is None else (self.last + 1) % BDSEQ_MODULO
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(f"{value}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not stop telemetry: say so, go on
            log.error(
                "cannot record bdSeq; a restart may reuse it",
                path=str(self.path),
                error=exc.strerror,
            )
        self.last = value
        return value
