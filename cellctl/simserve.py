"""`cellctl sim NAME`: one simulator served until SIGTERM/SIGINT, or, with
`--watch-stdin` (how the daemon starts it, cellctl/simchild.py), until its
stdin closes: the daemon holds the only writer of that pipe, so the child
ends when the daemon does, even when the daemon was killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

# If the simulator's own shutdown hangs once its parent is gone, nobody would
# stop it: after this long the process exits regardless.
ORPHAN_GRACE_S = 10.0


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Runs in a thread: a blocked event loop must not keep an orphan alive."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:  # the loop has closed: the process is ending anyway
        return
    threading.Event().wait(ORPHAN_GRACE_S)
    os._exit(1)


async def serve(sim_cls: Any, options: Any, watch_stdin: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:
        threading.Thread(
            target=_watch_stdin, args=(loop, stop), name="parent-watch", daemon=True
        ).start()
    async with sim_cls(options) as sim:
        print(sim.endpoint, flush=True)
        if watch_stdin:
            # Nobody reads stdout after the endpoint: whatever a simulator prints later
            # goes to stderr, which the daemon relays, instead of filling the pipe.
            os.dup2(2, 1)
        await stop.wait()
