"""What start-up built is out of the cyclic collector's reach while the cell runs, and
back in it once the cell stops (a process that lives on, like this one, collects it).

Why: each full collection scanned it all, about 100 ms with the loop stopped, the tail
of the emergency-stop latency under load (benchmarks/command_load.py, docs/mqtt.md).
"""

from __future__ import annotations

import gc
from pathlib import Path

from jobs.conftest import make_cell, printer, running, wait_for


async def test_startup_objects_frozen_while_running_and_released_at_stop(tmp_path: Path) -> None:
    gc.unfreeze()
    cell = make_cell(tmp_path, {"p1": printer()})
    async with running(cell):
        await wait_for(lambda: gc.get_freeze_count() > 0, "start-up frozen once ready")
        frozen = gc.get_freeze_count()
        # The cell's own objects are among them: far more than a bare interpreter's.
        assert frozen > 10_000
    assert gc.get_freeze_count() == 0
