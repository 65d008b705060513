"""G-code scans of large files in a worker process, so that they cannot stall the loop.

`scan_file` is pure Python (about a second per MB). Run in a thread it holds
the GIL, and the event loop waits for it at every await: behind a flood of
4 MB submits an emergency stop took 400 ms to reach the devices
(benchmarks/command_load.py, docs/mqtt.md "Load"). A file larger than
IN_PROCESS_MAX is scanned by one long-lived worker process instead. Blocking:
call from a thread, as the job service does.

multiprocessing is imported with the first large file, not with the daemon: most
cells never scan one, and it costs the idle daemon 0.5 MiB (issue 27).
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cellctl.jobs.gcode import GcodeInfo, scan_file

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

IN_PROCESS_MAX = 1 << 20

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def scan(path: Path) -> GcodeInfo:
    """scan_file(path), in the worker process for a large file. Raises OSError as it does."""
    global _pool
    if path.stat().st_size <= IN_PROCESS_MAX:
        return scan_file(path)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with _lock:
        if _pool is None:
            # spawn: forking a process that runs threads and an event loop is unsafe.
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            # Let go of it before the interpreter tears modules down: imported after this
            # one, concurrent.futures.process is torn down first, and a pool collected
            # then fails in its own callback ("'NoneType' object has no attribute 'util'").
            atexit.register(_let_go, _pool)
        pool = _pool
    try:
        return pool.submit(scan_file, path).result()
    except BrokenProcessPool:  # the worker died (killed, out of memory): a new one next time
        with _lock:
            if _pool is pool:
                _pool = None
        return scan_file(path)


def _let_go(pool: ProcessPoolExecutor) -> None:
    global _pool
    pool.shutdown(wait=True, cancel_futures=True)
    with _lock:
        if _pool is pool:
            _pool = None
