"""Keep asyncua's own loggers from flooding the daemon's log.

asyncua logs every refused session, every lost socket and every failed
publish (once a second while a server is away) at WARNING or ERROR, often
with a traceback. The driver already reports each of these once, as a
cellctl error, so the library's loggers are raised to CRITICAL unless the
user asked for them (CELLCTL_ASYNCUA_LOG=debug|info|warning|error).
"""

from __future__ import annotations

import logging
import os

_done = False


def quiet_asyncua() -> None:
    global _done
    if _done:
        return
    _done = True
    wanted = os.environ.get("CELLCTL_ASYNCUA_LOG", "").upper()
    level = getattr(logging, wanted, logging.CRITICAL) if wanted else logging.CRITICAL
    logging.getLogger("asyncua").setLevel(level)
