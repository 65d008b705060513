"""Job service figures, each as a ratio against a baseline measured in the same run.

1. submit: JobService.submit of a one-step G-code job (validation, program into the
   content-addressed store with fsync, metadata scan, durable commit, event) against
   the floor it cannot beat: one raw INSERT + COMMIT with synchronous=FULL in the
   same SQLite file system.
2. dispatch: one BaselineDispatcher decision over N waiting steps and D devices
   against sorting the same N candidates (the least any priority rule must do).

Medians over repetitions; `--quick` for a short run.

    python benchmarks/jobs_service.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from jobs.conftest import REGISTRY, gcode, make_cell, printer

from cellctl import logs
from cellctl.events import EventBus
from cellctl.jobs.dispatch import BaselineDispatcher, Candidate, DeviceView
from cellctl.jobs.service import JobService
from cellctl.jobs.spec import JobSpec
from cellctl.store import Store
from cellctl.supervisor import Supervisor


def raw_insert_ms(path: Path, n: int) -> list[float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, spec TEXT)")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"raw-{i}", "{}" * 100))
        conn.execute("COMMIT")
        out.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return out


async def submit_ms(tmp: Path, n: int) -> list[float]:
    cell = make_cell(tmp, {"p1": printer()})
    bus = EventBus()
    part = tmp / "part.gcode"
    out = []
    async with Store(cell.state_dir / "cellctl.db") as store:
        supervisor = Supervisor({}, REGISTRY, bus.publish, cell.config.supervisor)
        service = JobService(store, supervisor, bus, lambda: cell)
        service.ready.set()  # submit only: the dispatch loop is not part of this figure
        for i in range(n):
            part.write_text(gcode(200, extra=f"; part {i}"))
            spec = JobSpec.model_validate(
                {"id": f"job-{i}", "route": [{"process": "print", "program": "part.gcode"}]}
            )
            t0 = time.perf_counter()
            await service.submit(spec, {"part.gcode": part})
            out.append((time.perf_counter() - t0) * 1000)
    return out


def dispatch_us(n: int, devices: int, reps: int) -> tuple[list[float], list[float]]:
    rng = random.Random(1)
    mats = ["PLA", "PETG", "ABS"]
    cands = [
        Candidate(
            f"j{i}/0",
            f"j{i}",
            0,
            seq=i,
            priority=rng.randint(-2, 2),
            process=rng.choice(["print", "mill"]),
            setup={"material": rng.choice(mats)},
        )
        for i in range(n)
    ]
    views = {
        f"d{k}": DeviceView(
            f"d{k}",
            frozenset({rng.choice(["print", "mill"])}),
            {"material": rng.choice(mats)},
            True,
        )
        for k in range(devices)
    }
    d = BaselineDispatcher()
    base, meas = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        sorted(cands, key=lambda c: c.order)
        base.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        d.assign(cands, views)
        meas.append((time.perf_counter() - t0) * 1e6)
    return base, meas


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    logs.configure("warning", "console")
    n = 30 if args.quick else 200
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as d:
        tmp = Path(d)
        raw = raw_insert_ms(tmp / "raw.db", n)
        sub = asyncio.run(submit_ms(tmp, n))
    r, s = statistics.median(raw), statistics.median(sub)
    print(
        f"submit      n={n}: median {s:.2f} ms  (baseline raw durable INSERT {r:.2f} ms)"
        f"  ratio {s / r:.1f}x  -> {1000 / s:.0f} jobs/s acknowledged"
    )
    for steps in (100, 1000) if args.quick else (100, 1000, 5000):
        base, meas = dispatch_us(steps, 10, 20 if args.quick else 50)
        b, m = statistics.median(base), statistics.median(meas)
        print(
            f"dispatch    {steps:>5} steps x 10 devices: median {m:.0f} us"
            f"  (baseline sort {b:.0f} us)  ratio {m / b:.1f}x"
        )


if __name__ == "__main__":
    main()
