"""A simulator in its own process (`cellctl sim NAME --set KEY=VALUE …`), as a real
device is its own machine: its work is not charged to the process measured."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping


@contextlib.asynccontextmanager
async def sim_process(
    name: str, settings: Mapping[str, object], start_s: float = 60.0
) -> AsyncIterator[tuple[str, int]]:
    """The simulator's endpoint (the first line it prints) and its pid, while entered."""
    args = [f"{k}={v}" for k, v in settings.items()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cellctl",
        "sim",
        name,
        *(a for arg in args for a in ("--set", arg)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(start_s):
            line = await proc.stdout.readline()
        endpoint = line.decode().strip()
        if not endpoint:
            raise RuntimeError(f"simulator {name} did not start")
        yield endpoint, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()
