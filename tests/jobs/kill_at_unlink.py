"""The daemon (support/launch.py) killing itself with SIGKILL at the hot folder's first
delete of a dropped file: after the job's commit, before the file is gone."""

from __future__ import annotations

import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from support.launch import main

from cellctl.safefs import Folder, Identity


def _unlink_or_die(self: Folder, name: str, read: Identity) -> bool:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


# The hot folder deletes what it read only through Folder.unlink_if_same.
Folder.unlink_if_same = _unlink_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
