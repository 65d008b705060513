"""Re-planning figures: pricing with `after`, the anytime method at 5,000 steps, and
the loop and the Marlin stream while a 5,000-step re-plan runs off the loop.

1. Routes (`after`): the 10-machine cell of `scheduling.py` with its jobs
   chained into routes of 2–3 steps. The greedy method (every job priced at
   every place: pricing dominates it) and anytime for 1 s, with moves priced
   by full decodes (before) and incrementally (`coupled.Pricer`, after), in
   the same process. Same plans, so the figures must match.
2. The anytime method on the 5,000-step re-plan: how much it improves on the
   instant plan within budgets of 0.25, 0.5 and 1 s (weighted tardiness),
   from scratch (the budget includes building the instant plan) and from the
   plan in force (`plan(..., start=)`, here the instant plan).
3. Loop lag while a 5,000-step re-plan (anytime from scratch, 1 s budget)
   runs in a worker thread (the daemon's 1 ms switch interval) or a warm
   worker process: p50/p99/max on 1 ms ticks, against the idle loop.
4. A G-code file (short segments) streamed to the simulated Marlin printer
   (in its own process, as `marlin_stream.py`'s eight printers; 115200 baud,
   1 ms latency timer) alone, and while the thread or the process re-plans
   back to back: lines per second and the ratio to alone, loop lag p99, and
   the p99 from reading an `ok` to writing the next line.

    python benchmarks/replanning.py [--quick] [--json OUT.json]

Medians of repetitions; ratios against the baseline run in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from looplag import lag_while
from scheduling import cell_problem

from cellctl.planning import Job, Machine, Objective, Problem, check, plan
from cellctl.planning.model import PREVIOUS
from cellctl.planning.solution import Solution


def routed(seed: int, steps: int) -> Problem:
    """The cell's jobs chained into routes of 2–3 steps (step k+1 after step k)."""
    base = cell_problem(seed, steps, 6, 4, Objective.WEIGHTED_TARDINESS)
    rng = random.Random(seed)
    jobs = list(base.jobs)
    k = 0
    while k < len(jobs):
        length = rng.randint(2, 3)
        for i in range(k + 1, min(k + length, len(jobs))):
            prev = jobs[i - 1]
            due = jobs[i].due
            if due is not None and prev.due is not None:
                due = max(due, prev.due + min(jobs[i].durations.values()))
            jobs[i] = dataclasses.replace(jobs[i], after=(prev.id,), due=due)
        k += length
    return dataclasses.replace(base, jobs=tuple(jobs))


def tended(seed: int, steps: int, tend: bool = True) -> Problem:
    """`routed`, plus a robot R1: it tends half the mill steps (`reserves: ["R1"]`; not
    if `tend` is false) and unloads every print that ends a route (a 2-minute step
    after it, `@previous`)."""
    base = routed(seed, steps)
    rng = random.Random(seed + 1)
    last_of_route = {j.id for j in base.jobs} - {a for j in base.jobs for a in j.after}
    jobs: list[Job] = []
    for j in base.jobs:
        if j.id.startswith("J") and any(m.startswith("M") for m in j.durations):
            if rng.random() < 0.5 and tend:
                j = dataclasses.replace(j, reserves=("R1",))
        jobs.append(j)
        if j.id in last_of_route and any(m.startswith("P") for m in j.durations):
            jobs.append(Job(f"U{j.id}", "gripper", {"R1": 2}, after=(j.id,), reserves=(PREVIOUS,)))
    return dataclasses.replace(
        base, machines=(*base.machines, Machine("R1", "gripper")), jobs=tuple(jobs)
    )


def reservations(quick: bool) -> list[dict[str, Any]]:
    """Planning with a tending and unloading robot: every method's time and figures; and
    with unloads only (`@previous`: priced incrementally), greedy before and after."""
    rows = []
    for steps in (40, 80) if quick else (40, 80, 160):
        prob = tended(steps, steps, tend=False)
        t_full, a = _timed(prob, "greedy", False)
        t_inc, b = _timed(prob, "greedy", True)
        assert a.sequences == b.sequences
        rows.append(
            {
                "steps": len(prob.jobs),
                "method": "greedy, unloads only",
                "s": t_inc,
                "full_s": t_full,
                "wt": b.figures.weighted_tardiness,
                "iterations": 0,
            }
        )
    for steps in (40,) if quick else (40, 80):
        prob = tended(steps, steps)
        for method, kw in (
            ("fifo", {}),
            ("instant", {}),
            ("greedy", {}),
            ("anytime", {"budget_s": 1.0}),
        ):
            took, got = _timed(prob, method, True, **kw)
            rows.append(
                {
                    "steps": len(prob.jobs),
                    "method": method,
                    "s": took,
                    "wt": got.figures.weighted_tardiness,
                    "iterations": got.iterations,
                }
            )
    return rows


def _timed(problem: Problem, method: str, incremental: bool, **kw: Any) -> tuple[float, Any]:
    Solution.incremental = incremental
    try:
        t0 = time.perf_counter()
        got = plan(problem, method, **kw)
        took = time.perf_counter() - t0
    finally:
        Solution.incremental = True
    assert check(problem, got.assignments) == got.figures
    return took, got


def pricing(quick: bool) -> list[dict[str, Any]]:
    rows = []
    reps = 1 if quick else 3
    for steps in (50, 100) if quick else (50, 100, 200):
        prob = routed(steps, steps)
        full = [_timed(prob, "greedy", False) for _ in range(reps)]
        inc = [_timed(prob, "greedy", True) for _ in range(reps)]
        assert full[0][1].sequences == inc[0][1].sequences  # the same prices, the same plan
        t_full = statistics.median(t for t, _ in full)
        t_inc = statistics.median(t for t, _ in inc)
        rows.append(
            {
                "steps": steps,
                "method": "greedy",
                "full_s": t_full,
                "incremental_s": t_inc,
                "speedup": t_full / t_inc,
            }
        )
    for steps in (100,) if quick else (100, 300):
        prob = routed(steps, steps)
        _, a = _timed(prob, "anytime", False, budget_s=1.0, seed=1)
        _, b = _timed(prob, "anytime", True, budget_s=1.0, seed=1)
        _, inst = _timed(prob, "instant", True)
        rows.append(
            {
                "steps": steps,
                "method": "anytime 1 s",
                "instant_wt": inst.figures.weighted_tardiness,
                "full_iterations": a.iterations,
                "full_wt": a.figures.weighted_tardiness,
                "incremental_iterations": b.iterations,
                "incremental_wt": b.figures.weighted_tardiness,
            }
        )
    return rows


REPLAN_STEPS = 5000


def big() -> Problem:
    return cell_problem(500, REPLAN_STEPS, 6, 4, Objective.WEIGHTED_TARDINESS)


BUDGETS = (0.25, 0.5, 1.0)


def anytime_5000(reps: int) -> dict[str, Any]:
    """Instant, then anytime with each budget (the budget includes the instant plan)."""
    prob = big()
    out: dict[str, Any] = {"instant": []}
    for b in BUDGETS:
        out[str(b)], out[f"warm {b}"] = [], []
    for r in range(reps):
        inst = plan(prob, "instant")
        out["instant"].append((inst.elapsed_s, inst.figures.weighted_tardiness))
        for b in BUDGETS:
            got = plan(prob, "anytime", budget_s=b, seed=r)
            assert check(prob, got.assignments) == got.figures
            out[str(b)].append((got.elapsed_s, got.figures.weighted_tardiness))
            # A re-plan from the plan in force (here: the instant plan).
            warm = plan(prob, "anytime", budget_s=b, seed=r, start=inst.sequences)
            assert check(prob, warm.assignments) == warm.figures
            out[f"warm {b}"].append((warm.elapsed_s, warm.figures.weighted_tardiness))
    return out


def _replan(problem: Problem) -> int:
    return plan(problem, "anytime", budget_s=1.0).figures.weighted_tardiness


async def _lag_while(pool: concurrent.futures.Executor | None, prob: Problem) -> dict[str, float]:
    if pool is None:
        return await lag_while(None, idle_s=2.0)

    async def replan() -> None:
        await asyncio.get_running_loop().run_in_executor(pool, _replan, prob)

    return await lag_while(replan, idle_s=0)


def loop_lag(reps: int) -> dict[str, dict[str, float]]:
    """Loop lag on 1 ms ticks: idle, and while a 5,000-step re-plan runs in a thread (the
    daemon's 1 ms switch interval) or a warm worker process."""
    prob = big()
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    out: dict[str, list[dict[str, float]]] = {k: [] for k in ("idle", *MODES)}
    pools = {k: _pool(k) for k in MODES}
    try:
        for _ in range(reps):
            out["idle"].append(asyncio.run(_lag_while(None, prob)))
            for k, pool in pools.items():
                out[k].append(asyncio.run(_lag_while(pool, prob)))
    finally:
        sys.setswitchinterval(old)
        for pool in pools.values():
            pool.shutdown()
    return {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in out.items()}


MARLIN_BAUD, MARLIN_LATENCY_MS = 115200, 1.0
# Where the re-plan runs: a thread of the daemon's process, a warm worker
# process, and one at nice +10 (the OS prefers the daemon's loop over it).
MODES = ("thread", "process", "nice process")


def _nice() -> None:
    os.nice(10)  # the planner yields the CPU to the daemon's loop under contention


def _pool(mode: str) -> concurrent.futures.Executor:
    if mode == "thread":
        return concurrent.futures.ThreadPoolExecutor(1)
    procs = concurrent.futures.ProcessPoolExecutor(
        1, initializer=_nice if mode == "nice process" else None
    )
    procs.submit(_replan, cell_problem(1, 5, 1, 0, Objective.MAKESPAN)).result()  # warm
    return procs


async def stream_beside(
    path: Path, replan: Problem | None, pool: concurrent.futures.Executor | None
) -> dict[str, float]:
    """Stream `path` to a simulated Marlin (its own process, as `marlin_stream.py`'s
    eight printers) while, if given, `pool` re-plans `replan` back to back."""
    from marlin_stream import external_sims, job_stats, stream

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    replans: list[float] = []

    async def replanning() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await loop.run_in_executor(pool, _replan, replan)
            replans.append(time.perf_counter() - t0)

    lags: list[float] = []

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    async with external_sims(1, MARLIN_BAUD, MARLIN_LATENCY_MS) as (paths, _):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ticker())
            if replan is not None:
                tg.create_task(replanning())
                await asyncio.sleep(0.5)  # the re-plan is under way before the stream
            elapsed, _, reactions = await stream(paths[0], path, None)
            stop.set()
    lines, _, framed = job_stats(path)
    lags.sort()
    reactions.sort()
    return {
        "lines_s": lines / elapsed,
        "wire": framed / elapsed / (MARLIN_BAUD / 10),
        "lag_p99_ms": lags[int(len(lags) * 0.99)],
        "ok_send_p99_ms": 1000 * reactions[int(0.99 * (len(reactions) - 1))],
        "replans": len(replans),
        "replan_s": statistics.median(replans) if replans else 0.0,
    }


def marlin(reps: int, lines: int) -> dict[str, Any]:
    """The Marlin stream alone and beside back-to-back 5,000-step re-plans (medians)."""
    import structlog
    from cellctl_drivers.marlin.samples import write_short_segments

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    prob = big()
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("alone", *MODES)}
    pools = {k: _pool(k) for k in MODES}
    try:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "short.gcode"
            write_short_segments(path, lines)
            for _ in range(reps):
                runs["alone"].append(asyncio.run(stream_beside(path, None, None)))
                for k, pool in pools.items():
                    runs[k].append(asyncio.run(stream_beside(path, prob, pool)))
    finally:
        sys.setswitchinterval(old)
        for pool in pools.values():
            pool.shutdown()
    out: dict[str, Any] = {
        k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()
    }
    for k in MODES:
        out[k]["ratio"] = out[k]["lines_s"] / out["alone"]["lines_s"]
    out["runs"] = reps
    out["lines"] = lines
    out["baud"] = MARLIN_BAUD
    return out


def report(res: dict[str, Any]) -> None:
    print("1. pricing with `after` (routes of 2-3 steps, 10 machines)")
    for r in res["pricing"]:
        if r["method"] == "greedy":
            print(
                f"  {r['steps']:>4} steps  greedy: full decodes {r['full_s'] * 1000:8.1f} ms"
                f"  incremental {r['incremental_s'] * 1000:7.1f} ms  ×{r['speedup']:.1f}"
            )
        else:
            print(
                f"  {r['steps']:>4} steps  anytime 1 s: iterations {r['full_iterations']} → "
                f"{r['incremental_iterations']}; weighted tardiness instant {r['instant_wt']}, "
                f"full {r['full_wt']}, incremental {r['incremental_wt']}"
            )
    if res.get("reserves"):
        print("1b. reservations: a robot tends half the mill steps and unloads route-ending prints")
        for r in res["reserves"]:
            if "full_s" in r:
                print(
                    f"  {r['steps']:>4} steps  greedy, unloads only: full decodes "
                    f"{r['full_s'] * 1000:8.1f} ms, incremental {r['s'] * 1000:7.1f} ms "
                    f"×{r['full_s'] / r['s']:.1f}"
                )
                continue
            print(
                f"  {r['steps']:>4} steps  {r['method']:<8} {r['s'] * 1000:8.1f} ms  weighted "
                f"tardiness {r['wt']:,}"
                + (f"  ({r['iterations']} iterations)" if r["iterations"] else "")
            )
    if "anytime" in res:
        a = res["anytime"]
        wt0 = statistics.median(w for _, w in a["instant"])
        print("2. the 5,000-step re-plan (10 machines, weighted tardiness), medians")
        print(
            f"  instant {statistics.median(t for t, _ in a['instant']):.2f} s, "
            f"weighted tardiness {wt0:,}"
        )
        for label in [str(b) for b in BUDGETS] + [f"warm {b}" for b in BUDGETS]:
            wt = statistics.median(w for _, w in a[label])
            took = statistics.median(t for t, _ in a[label])
            what = (
                f"anytime from the instant plan in force, {label[5:]} s"
                if label.startswith("warm")
                else f"anytime from scratch, {label} s"
            )
            print(
                f"  {what:<45} took {took:.2f} s, weighted tardiness {wt:,} "
                f"(× instant {wt / max(wt0, 1):.4f})"
            )
    if "loop_lag" in res:
        print("3. loop lag on 1 ms ticks (medians of runs)")
        for k, f in res["loop_lag"].items():
            print(
                f"  {k:<12} p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  max "
                f"{f['max_ms']:.1f} ms  (re-plan {f['replan_s']:.2f} s)"
            )
    if "marlin" in res:
        m = res["marlin"]
        print(
            f"4. Marlin: {m['lines']} short lines at {m['baud']} baud, 1 ms latency timer, "
            f"simulator in its own process; medians of {m['runs']}"
        )
        for k in ("alone", *MODES):
            f = m[k]
            what = "alone" if k == "alone" else f"re-plans in a {k} ({f['replans']:.0f})"
            ratio = f" ÷ alone {f['ratio']:.3f}" if "ratio" in f else ""
            print(
                f"  {what:<31} {f['lines_s']:7.1f} lines/s{ratio}  wire/cap {f['wire']:.3f}  "
                f"loop lag p99 {f['lag_p99_ms']:.2f} ms  ok→send p99 {f['ok_send_p99_ms']:.2f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--parts", default="123", help="1 pricing, 2 anytime 5,000, 3 lag+Marlin")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    res: dict[str, Any] = {"pricing": [], "load_average": os.getloadavg()[0]}
    print(f"{os.cpu_count()} CPUs, load average {res['load_average']:.1f} at the start")
    if "1" in args.parts:
        res["pricing"] = pricing(args.quick)
        res["reserves"] = reservations(args.quick)
    if "2" in args.parts:
        res["anytime"] = anytime_5000(reps)
    if "3" in args.parts:
        res["loop_lag"] = loop_lag(reps)
        res["marlin"] = marlin(reps, 1000 if args.quick else 2000)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    report(res)


if __name__ == "__main__":
    main()
