"""Learned durations in the live cell: a printer whose changeovers take a fixed time
(an operator who always needs OPERATOR_S), far from the configured guess (600 s);
after 10 changeovers the planner's estimate is within 10 % of it, and every one is
stored (real App, store, planner; in-test machine at time_factor 10)."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from pathlib import Path

from jobs.conftest import printer, running, wait_job
from jobs.test_planner_live import next_request, planner_cell, print_job

from cellctl.cli import learned_view
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.model import JobState

OPERATOR_S = 0.4  # what every changeover takes here
CHANGES = 10


async def test_changeover_estimate_converges_to_the_measured_time(tmp_path: Path) -> None:
    cell = planner_cell(tmp_path, {"p1": printer()})  # PLA loaded; material guessed 600 s
    async with running(cell) as app:
        learning = app.jobs.learning
        assert learning is not None
        await asyncio.wait_for(learning.loaded.wait(), 10)
        events = app.bus.subscribe("test", lossless=True)
        t0 = time.monotonic()
        for i in range(CHANGES):
            material = "PETG" if i % 2 == 0 else "PLA"
            spec, files = print_job(tmp_path, f"j{i}", material, lines=10)
            await app.jobs.submit(spec, files)
            while True:
                req = await next_request(events)
                if req.step_key == f"j{i}/0" and not req.details.get("withdrawn"):
                    break
            await asyncio.sleep(OPERATOR_S)  # the operator at work
            await app.jobs.set_setup("p1", {"material": material}, merge=True)
            done = await wait_job(app, f"j{i}", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
        elapsed = time.monotonic() - t0
        for a, b in (("pla", "petg"), ("petg", "pla")):
            est = learning.learned.changeover("p1", f"material={a}", f"material={b}", 600.0)
            assert est.learned and est.samples == CHANGES // 2, est
            assert abs(est.value - OPERATOR_S) <= 0.1 * OPERATOR_S, (est, elapsed)
        times = learning.times.changeovers
        assert abs(times[("p1", "material=pla", "material=petg")] - OPERATOR_S) < 0.05
        # The planner plans with it: the dispatcher's problems get the learned times.
        planner = app.jobs.dispatcher
        assert isinstance(planner, PlannerDispatcher) and planner.adjust is learning.times
        # Every step's run was measured too (the device's speed against its estimate).
        assert learning.learned.speed("p1").samples == CHANGES
    with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
        rows = conn.execute(
            "SELECT kind, device, from_setup, to_setup, automatic, seconds FROM measured"
        ).fetchall()
    changes = [r for r in rows if r[0] == "changeover"]
    assert len(changes) == CHANGES and all(r[4] == 0 for r in changes)
    assert [r[3] for r in changes] == ["material=petg", "material=pla"] * (CHANGES // 2)
    # Each at least the operator's time (a loaded machine adds to some: the trimmed mean
    # of the estimate above is what keeps such outliers from moving it).
    assert all(r[5] >= OPERATOR_S - 0.01 for r in changes), changes
    assert abs(statistics.median(r[5] for r in changes) - OPERATOR_S) <= 0.1 * OPERATOR_S
    assert sum(r[0] == "step" for r in rows) == CHANGES
    # `cellctl check` shows configured vs learned, from the store.
    shown = learned_view.from_store(cell)
    assert shown is not None
    pair = next(c for c in shown["changeovers"] if c["change"] == "material=pla → material=petg")
    assert pair["configured_s"] == 600 and pair["samples"] == CHANGES // 2
    assert abs(pair["learned_s"] - OPERATOR_S) <= 0.1 * OPERATOR_S
    text = "\n".join(learned_view.lines(shown))
    assert "p1: changeover material=pla → material=petg: 600 s → 0.4 s (5 measured)" in text, text
