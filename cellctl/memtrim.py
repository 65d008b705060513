"""Give freed heap memory back to the system after a burst of large messages.

glibc's malloc keeps memory freed inside its heaps for reuse, and raises its
mmap threshold after large blocks are freed, so that after a flood of 4 MiB
command messages the daemon's resident size stayed 50 MiB above its start
although nothing held the messages any more (benchmarks/command_load.py).
`malloc_trim(0)` returns those pages: after it, +12 MiB. Elsewhere than glibc
this does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # only once a flood happened: an idle daemon does not pay for it
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """True when memory was given back. Blocking (it walks the heaps): call it in a thread."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
