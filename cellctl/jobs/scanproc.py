"""G-code scans of large files in a worker process, so that they cannot stall the loop.

`scan_file` is pure Python (about a second per MB). Run in a thread it holds
the GIL, and the event loop waits for it at every await: behind a flood of
4 MB submits an emergency stop took 400 ms to reach the devices
(benchmarks/command_load.py, docs/mqtt.md "Load"). A file larger than
IN_PROCESS_MAX is scanned by one long-lived worker process instead. Blocking:
call from a thread, as the job service does.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from cellctl.jobs.gcode import GcodeInfo, scan_file

IN_PROCESS_MAX = 1 << 20

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def scan(path: Path) -> GcodeInfo:
    """scan_file(path), in the worker process for a large file. Raises OSError as it does."""
    global _pool
    if path.stat().st_size <= IN_PROCESS_MAX:
        return scan_file(path)
    with _lock:
        if _pool is None:
            # spawn: forking a process that runs threads and an event loop is unsafe.
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool = _pool
    try:
        return pool.submit(scan_file, path).result()
    except BrokenProcessPool:  # the worker died (killed, out of memory): a new one next time
        with _lock:
            if _pool is pool:
                _pool = None
        return scan_file(path)
