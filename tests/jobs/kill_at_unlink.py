"""The daemon (support/launch.py) killing itself with SIGKILL at the hot folder's first
delete of a dropped file: after the job's commit, before the file is gone."""

from __future__ import annotations

import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from support.launch import main

_unlink = pathlib.Path.unlink


def _unlink_or_die(self: pathlib.Path, missing_ok: bool = False) -> None:
    if self.parent.name == "hot":
        os.kill(os.getpid(), signal.SIGKILL)
    _unlink(self, missing_ok)


pathlib.Path.unlink = _unlink_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
