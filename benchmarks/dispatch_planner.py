"""A dispatch decision through the live planner against the baseline, in one process.

1,000 waiting steps (four materials, two nozzles), 10 printers. Each round some
printers are free; the decision (`assign`, on the event loop) is timed. The
planner's re-plans run meanwhile on its worker thread, as in the daemon (they
compete for the GIL, with the daemon's 1 ms switch interval: that is in the
figures). Rounds pass the way a cell's do:
the assigned steps leave, their printers turn busy, a few steps arrive, a busy
printer frees up.

Prints the median and p99 of a decision for both dispatchers, their ratio, and
the median re-plan time. `--quick` for a short run.

    python benchmarks/dispatch_planner.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable

from cellctl import logs
from cellctl.jobs.dispatch import Assignment, BaselineDispatcher, Candidate, DeviceView
from cellctl.jobs.planned import PlannerDispatcher
from cellctl.scheduler_config import PlanWorker, SchedulerSection

MATERIALS = ["PLA", "PETG", "ABS", "TPU"]


def candidate(rng: random.Random, n: int) -> Candidate:
    return Candidate(
        key=f"j{n}/0",
        job_id=f"j{n}",
        index=0,
        seq=n,
        priority=rng.choice([0, 0, 0, 1]),
        process="print",
        setup={"material": rng.choice(MATERIALS), "nozzle": rng.choice(["0.4", "0.6"])},
        estimated_s=float(rng.randint(600, 7200)),
    )


async def rounds(
    assign: Callable[[list[Candidate], dict[str, DeviceView]], list[Assignment]],
    n_steps: int,
    n_dev: int,
    n_rounds: int,
    seed: int,
    pause_s: float,
) -> list[float]:
    rng = random.Random(seed)
    cands = {c.key: c for c in (candidate(rng, i) for i in range(n_steps))}
    next_id = n_steps
    now = time.time()
    devs = {
        f"p{k}": DeviceView(
            f"p{k}",
            frozenset({"print"}),
            {"material": MATERIALS[k % 4], "nozzle": "0.4"},
            k % 3 == 0,
            None,
            None if k % 3 == 0 else now + rng.randint(60, 3600),
        )
        for k in range(n_dev)
    }
    out = []
    for _ in range(n_rounds):
        listed = list(cands.values())
        t0 = time.perf_counter()
        got = assign(listed, devs)
        out.append((time.perf_counter() - t0) * 1000)
        for a in got:
            cands.pop(a.key, None)
            v = devs[a.device]
            devs[a.device] = DeviceView(v.id, v.processes, v.setup, False, None, now + 1800)
        for _ in range(len(got)):  # the cell's queue stays about as long
            c = candidate(rng, next_id)
            cands[c.key] = c
            next_id += 1
        busy = [d for d, v in devs.items() if not v.free]
        if busy:  # a printer finishes; sometimes an operator changes its material
            d = rng.choice(busy)
            v = devs[d]
            setup = dict(v.setup)
            if rng.random() < 0.2:
                setup["material"] = rng.choice(MATERIALS)
            devs[d] = DeviceView(d, v.processes, setup, True, None, None)
        await asyncio.sleep(pause_s)  # the loop runs on: the worker's plan lands
    return out


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98]


async def main(quick: bool) -> None:
    logs.configure("warning")
    # As the daemon runs ([supervisor] thread_switch_ms = 1): a worker thread gives the
    # interpreter lock back to the event loop within 1 ms.
    sys.setswitchinterval(0.001)
    n_steps, n_dev = 1000, 10
    n_rounds = 150 if quick else 600
    pause = 0.01
    base = await rounds(BaselineDispatcher().assign, n_steps, n_dev, n_rounds, 1, pause)
    print(f"dispatch decision, {n_steps} waiting steps, {n_dev} devices, {n_rounds} rounds")
    print(f"  baseline: median {statistics.median(base):.3f} ms, p99 {p99(base):.3f} ms")
    for worker in PlanWorker:
        cfg = SchedulerSection(method="planner", budget_s=0.2, worker=worker)
        planner = PlannerDispatcher(lambda cfg=cfg: cfg)  # type: ignore[misc]
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(planner.run())
            # The first plan, before timing: a cold daemon falls back until it lands.
            planner.assign([candidate(random.Random(1), i) for i in range(n_steps)], {})
            while planner.current is None:
                await asyncio.sleep(0.01)
            plan = await rounds(planner.assign, n_steps, n_dev, n_rounds, 1, pause)
            task.cancel()
        med, top = statistics.median(plan), p99(plan)
        print(
            f"  planner, re-plans on a {worker.value}: median {med:.3f} ms, p99 {top:.3f} ms;"
            f" ratio to baseline: median {med / statistics.median(base):.2f},"
            f" p99 {top / p99(base):.2f}"
        )
        s = planner.stats
        print(
            f"    re-plans: {s.plans} (failed {s.failures}), median "
            f"{statistics.median(s.plan_s) * 1000:.0f} ms each; rounds decided by the "
            f"baseline rule (no fresh plan): {s.fallbacks}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    asyncio.run(main(ap.parse_args().quick))
