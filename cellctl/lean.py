"""Imports kept out of the daemon because it never uses them (benchmarks/footprint.py).

structlog imports rich, when it is installed, for pretty tracebacks on a
terminal; cellctl renders its own (cellctl/logs.py) and rich is only for
the CLI's live status table (cellctl/cli/remote.py). Hiding rich while
structlog loads saves about 5 MiB in the daemon and in every simulator
process; rich stays importable afterwards.
"""

from __future__ import annotations

import sys


def load_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return  # too late to matter, or rich is in use: change nothing
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog.dev
        import structlog.tracebacks  # noqa: F401
    finally:
        del sys.modules["rich"]
