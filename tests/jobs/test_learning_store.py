"""Measured durations survive a restart: what the store holds is what the next
start learns from (a real store; the rows as the job service writes them)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from cellctl.jobs.learning import Learning, _write
from cellctl.store import Store
from cellctl.tasks import TaskGroup


async def test_history_is_read_back_at_start(tmp_path: Path) -> None:
    async with Store(tmp_path / "cellctl.db") as store:
        rows = [
            ("changeover", "p1", "material=pla", "material=petg", 0, "j1/0", None, s, 1.0)
            for s in (40.0, 42.0, 44.0, 46.0, 400.0)  # one forgotten confirmation
        ]
        rows.append(("step", "p1", "", "", 0, "j1/0", 100.0, 110.0, 2.0))
        await store.call(functools.partial(_write, rows=rows))
        learning = Learning(store)
        async with TaskGroup() as tg:
            task = tg.create_task(learning.run())
            await asyncio.wait_for(learning.loaded.wait(), 10)
            task.cancel()
    est = learning.learned.changeover("p1", "material=pla", "material=petg", 600.0)
    assert est.learned and est.samples == 5 and est.value == 44.0  # 20 % trimmed each end
    assert learning.times.changeovers[("p1", "material=pla", "material=petg")] == est.value
    assert learning.learned.speed("p1").samples == 1
