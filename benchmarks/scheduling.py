"""Planner figures: FIFO, group-by-setup, greedy, instant, anytime and CP-SAT, on three tiers.

The generator (fixed seeds, `cell_problem`) builds cells of
- printers: setups material × nozzle (PLA, PETG, ABS, TPU × 0.4, 0.6 mm);
  a material change purges (asymmetric: PLA→PETG 8 min, PETG→PLA 12 min,
  anything to/from TPU 20–25 min), a nozzle swap adds 10 min, each printer
  scales the table by 0.8–1.2;
- mills: setups tool × fixture (T1–T4 × F1–F3); a tool change 2 min, a
  fixture change 15 min (they add), scaled per mill by 0.8–1.2;
- unrelated speeds: a job's time on a machine = its base time (prints 30–240
  min, machining 10–90 min) × the machine's speed factor (0.7–1.3) × noise
  (0.9–1.1), rounded to whole minutes.
Due dates (weighted tardiness tier) follow Potts & Van Wassenhove: with P the
total of the jobs' mean times divided by the machine count (per kind: prints
against printers, machining against mills), d ~ U[P(1 − τ −
R/2), P(1 − τ + R/2)] with τ = 0.4, R = 0.6; weights U{1..5}; releases 0.

Tiers (all figures from one run):
- A: 10–20 jobs on 2–4 machines, makespan. CP-SAT gets 60 s; only instances
  it proves optimal count.
- B: 50–80 jobs on 5 machines, makespan; anytime 1/3/5 s vs CP-SAT 30 s.
- C: 300 jobs on 10 machines (6 printers, 4 mills), weighted tardiness.
Plus the instant construction's time on 100 jobs × 10 machines (median of
repetitions) against FIFO's on the same problem (the same-run baseline), and
(tier W) a lights-out week: 250 jobs on the 10 machines with two weekday
shifts in Europe/Berlin, manual printer changeovers and fixture changes,
bed clearing after prints; FIFO, group, instant, part 1's anytime planned
without the calendar and pushed into shifts, and anytime with the calendar;
weighted tardiness, changeover minutes, idle machine-hours at night; and the
instant method's time on 5,000 steps. `--gantt` prints a readable day.

CP-SAT: OR-Tools (the `bench` extra, imported only here), `num_workers` = 2,
a presence literal per job and capable machine, one circuit per machine
with the changeover on each arc, and per machine makespan ≥ free_at + its
processing and changeover times (a redundant bound that lets CP-SAT prove).

    python benchmarks/scheduling.py [--quick] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from looplag import lag_while

from cellctl.planning import Job, Machine, Objective, Plan, Problem, check, evaluate, plan
from cellctl.planning.calendar import Calendar, Shift

MATERIALS = ("PLA", "PETG", "ABS", "TPU")
NOZZLES = ("0.4", "0.6")
PURGE = {  # minutes, from → to (asymmetric)
    ("PLA", "PETG"): 8,
    ("PETG", "PLA"): 12,
    ("PLA", "ABS"): 10,
    ("ABS", "PLA"): 14,
    ("PETG", "ABS"): 9,
    ("ABS", "PETG"): 11,
}
TOOLS = ("T1", "T2", "T3", "T4")
FIXTURES = ("F1", "F2", "F3")
TAU, RANGE = 0.4, 0.6
CPSAT_WORKERS = 2


def purge(a: str, b: str) -> int:
    if a == b:
        return 0
    if "TPU" in (a, b):
        return 25 if a == "TPU" else 20
    return PURGE[(a, b)]


def printer_change(a: str, b: str) -> int:
    (ma, na), (mb, nb) = a.split("-"), b.split("-")
    return purge(ma, mb) + (10 if na != nb else 0)


def mill_change(a: str, b: str) -> int:
    (ta, fa), (tb, fb) = a.split("-"), b.split("-")
    return (2 if ta != tb else 0) + (15 if fa != fb else 0)


def cell_problem(seed: int, jobs: int, printers: int, mills: int, objective: Objective) -> Problem:
    rng = random.Random(seed)
    p_setups = [f"{m}-{n}" for m in MATERIALS for n in NOZZLES]
    m_setups = [f"{t}-{f}" for t in TOOLS for f in FIXTURES]
    machines: list[Machine] = []
    setup_times: dict[str, dict[str, dict[str, int]]] = {}
    speed: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for i in range(printers + mills):
        is_printer = i < printers
        mid = f"P{i + 1}" if is_printer else f"M{i - printers + 1}"
        setups, change = (p_setups, printer_change) if is_printer else (m_setups, mill_change)
        scale = rng.uniform(0.8, 1.2)
        setup_times[mid] = {
            a: {b: round(change(a, b) * scale) for b in setups if b != a} for a in setups
        }
        machines.append(Machine(mid, rng.choice(setups), 0))
        speed[mid] = rng.uniform(0.7, 1.3)
        kinds[mid] = "print" if is_printer else "mill"
    out: list[tuple[str, str, dict[str, int]]] = []
    for k in range(jobs):
        kind = "print" if mills == 0 or (printers and rng.random() < 0.6) else "mill"
        setup = rng.choice(p_setups if kind == "print" else m_setups)
        base = rng.uniform(30, 240) if kind == "print" else rng.uniform(10, 90)
        durations = {
            m.id: max(1, round(base * speed[m.id] * rng.uniform(0.9, 1.1)))
            for m in machines
            if kinds[m.id] == kind
        }
        out.append((f"J{k + 1:03d}", setup, durations))
    # P per kind of machine: a print's due date follows the printers' load.
    load: dict[str, float] = {}
    for kind in ("print", "mill"):
        count = sum(1 for m in machines if kinds[m.id] == kind)
        work = sum(statistics.mean(d.values()) for _, _, d in out if kinds[next(iter(d))] == kind)
        load[kind] = work / count if count else 0.0
    job_list = []
    for jid, setup, durations in out:
        due = None
        weight = 1
        if objective is Objective.WEIGHTED_TARDINESS:
            p = load[kinds[next(iter(durations))]]
            due = max(0, round(rng.uniform(p * (1 - TAU - RANGE / 2), p * (1 - TAU + RANGE / 2))))
            weight = rng.randint(1, 5)
        job_list.append(Job(jid, setup, durations, 0, due, weight))
    return Problem(objective, tuple(machines), setup_times, tuple(job_list))


# --- CP-SAT ----------------------------------------------------------------


def cpsat(problem: Problem, seconds: float) -> dict[str, Any]:
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    jobs, machines = problem.jobs, problem.machines
    horizon = (
        sum(max(j.durations.values()) for j in jobs)
        + sum(
            max((t for row in problem.setup_times[m.id].values() for t in row.values()), default=0)
            * len(jobs)
            for m in machines[:1]
        )
        + max(m.free_at for m in machines)
    )
    start = [model.new_int_var(j.release, horizon, f"s{j.id}") for j in jobs]
    end = [model.new_int_var(0, horizon, f"e{j.id}") for j in jobs]
    span = model.new_int_var(0, horizon, "makespan")
    presence: dict[tuple[int, str], Any] = {}
    for i, j in enumerate(jobs):
        for mid, d in j.durations.items():
            lit = model.new_bool_var(f"x{j.id}{mid}")
            presence[(i, mid)] = lit
            model.add(end[i] == start[i] + d).only_enforce_if(lit)
        model.add_exactly_one(presence[(i, mid)] for mid in j.durations)
        model.add(span >= end[i])
    for m in machines:
        idx = [i for i, j in enumerate(jobs) if m.id in j.durations]
        arcs: list[tuple[int, int, Any]] = []
        busy: list[Any] = []  # the machine's work and changeovers: a strong makespan bound
        empty = model.new_bool_var(f"empty{m.id}")
        arcs.append((0, 0, empty))
        for i in idx:
            lit = presence[(i, m.id)]
            arcs.append((i + 1, i + 1, lit.Not()))
            first = model.new_bool_var("")
            arcs.append((0, i + 1, first))
            c0 = problem.changeover(m.id, m.initial_setup, jobs[i].setup)
            model.add(start[i] >= m.free_at + c0).only_enforce_if(first)
            busy += [jobs[i].durations[m.id] * lit, c0 * first]
            last = model.new_bool_var("")
            arcs.append((i + 1, 0, last))
            for k in idx:
                if k == i:
                    continue
                lit2 = model.new_bool_var("")
                arcs.append((i + 1, k + 1, lit2))
                c = problem.changeover(m.id, jobs[i].setup, jobs[k].setup)
                model.add(start[k] >= end[i] + c).only_enforce_if(lit2)
                busy.append(c * lit2)
        model.add_circuit(arcs)
        model.add(span >= m.free_at + sum(busy))
    model.minimize(span)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = CPSAT_WORKERS
    solver.parameters.random_seed = 0
    t0 = time.perf_counter()
    status = solver.solve(model)
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    return {
        "optimal": status == cp_model.OPTIMAL,
        "makespan": int(solver.objective_value) if found else None,
        "bound": int(solver.best_objective_bound),
        "elapsed_s": time.perf_counter() - t0,
    }


# --- running -------------------------------------------------------------


def run_methods(problem: Problem, budgets: list[float], seed: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in ("fifo", "group", "greedy", "instant"):
        p = plan(problem, method)
        out[method] = _figures(problem, p)
    for b in budgets:
        p = plan(problem, "anytime", budget_s=b, seed=seed)
        out[f"anytime {b:g}s"] = _figures(problem, p)
    return out


def _figures(problem: Problem, p: Any) -> dict[str, Any]:
    f = check(problem, p.assignments)
    assert f == p.figures, (f, p.figures)  # the checker agrees with the planner
    return {
        "key": list(f.key),
        "weighted_tardiness": f.weighted_tardiness,
        "changeover": f.changeover,
        "makespan": f.makespan,
        "elapsed_s": p.elapsed_s,
        "iterations": p.iterations,
    }


def tier_a(quick: bool) -> dict[str, Any]:
    shapes = [
        (10, 2),
        (10, 3),
        (11, 2),
        (12, 2),
        (12, 3),
        (13, 2),
        (13, 3),
        (14, 3),
        (16, 4),
        (20, 4),
    ]
    if quick:
        shapes = shapes[:3]
    rows = []
    for s, (n, m) in enumerate(shapes):
        prob = cell_problem(100 + s, n, m, 0, Objective.MAKESPAN)
        res = run_methods(prob, [1.0], seed=s)
        res["cpsat"] = cpsat(prob, 10.0 if quick else 60.0)
        rows.append({"shape": [n, m], "methods": res})
        print(
            f"  A{s} {n}×{m}: cpsat {res['cpsat']}  anytime {res['anytime 1s']['makespan']}",
            file=sys.stderr,
        )
    return {"rows": rows}


def tier_b(quick: bool) -> dict[str, Any]:
    sizes = [50, 65, 80] if not quick else [50]
    rows = []
    for s, n in enumerate(sizes):
        prob = cell_problem(200 + s, n, 5, 0, Objective.MAKESPAN)
        res = run_methods(prob, [1.0, 3.0, 5.0] if not quick else [1.0], seed=s)
        res["cpsat"] = cpsat(prob, 30.0 if not quick else 5.0)
        rows.append({"size": n, "methods": res})
        print(f"  B{s} {n}: cpsat {res['cpsat']}", file=sys.stderr)
    return {"rows": rows}


def tier_c(quick: bool) -> dict[str, Any]:
    seeds = [300, 301] if not quick else [300]
    rows = []
    for s in seeds:
        prob = cell_problem(s, 300, 6, 4, Objective.WEIGHTED_TARDINESS)
        res = run_methods(prob, [1.0, 3.0, 5.0] if not quick else [1.0], seed=s)
        rows.append({"seed": s, "methods": res})
        print(f"  C{s}: fifo {res['fifo']['key']}", file=sys.stderr)
    return {"rows": rows}


def instant_time(reps: int) -> dict[str, float]:
    prob = cell_problem(400, 100, 6, 4, Objective.WEIGHTED_TARDINESS)
    out = {}
    for method in ("fifo", "instant"):
        times = []
        for _ in range(reps):
            times.append(plan(prob, method).elapsed_s * 1000)
        out[method] = statistics.median(times)
    return out


def report(res: dict[str, Any]) -> None:
    def table(tier: str, rows: list[dict[str, Any]], ref: str) -> None:
        methods = [k for k in rows[0]["methods"] if k != "cpsat"]
        print(f"\nTier {tier}: mean ratio to FIFO and to {ref} (of the objective's first figure)")
        for meth in [*methods, "cpsat"]:
            to_fifo, to_ref, hits = [], [], 0
            for r in rows:
                got = r["methods"][meth]
                val = got["makespan"] if meth == "cpsat" else got["key"][0]
                if val is None:
                    continue
                fifo = r["methods"]["fifo"]["key"][0]
                to_fifo.append(val / fifo if fifo else float("nan"))
                if "reference" in r:
                    to_ref.append(val / r["reference"])
                    hits += val == r["reference"]
            line = f"  {meth:<13} ×FIFO {statistics.mean(to_fifo):.3f}"
            if to_ref:
                line += f"  ×{ref} {statistics.mean(to_ref):.3f}  at it {hits}/{len(to_ref)}"
            print(line)

    if res["A"]["rows"]:
        _report_a(res, table)
    if res["B"]["rows"]:
        _report_b(res, table)
    if res["C"]["rows"]:
        _report_c(res)
    if "week" in res:
        print("\nLights-out week (10 machines, two weekday shifts, Europe/Berlin):")
        for name, f in res["week"].items():
            print(
                f"  {name:<30} tardiness {f['weighted_tardiness']:>8}  changeover "
                f"{f['changeover']:>5} min  night idle {f['night_idle_h']:>6} machine-h"
            )
        r = res["replan_s"]
        print(f"  re-plan of 5,000 steps: instant {r['instant']:.2f} s (FIFO {r['fifo']:.2f} s)")
        for where, f in res["loop_lag"].items():
            print(
                f"  loop lag, re-plan {where:<8} p50 {f['p50_ms']:.2f} ms  p99 "
                f"{f['p99_ms']:.2f} ms  max {f['max_ms']:.1f} ms  ({f['replan_s']:.2f} s)"
            )
    t = res["instant_ms"]
    print(
        f"\ninstant on 100 jobs × 10 machines: {t['instant']:.2f} ms median "
        f"(FIFO {t['fifo']:.2f} ms; ratio {t['instant'] / t['fifo']:.1f})"
    )


Table = Callable[[str, list[dict[str, Any]], str], None]


def _report_a(res: dict[str, Any], table: Table) -> None:
    rows_a = [r for r in res["A"]["rows"] if r["methods"]["cpsat"]["optimal"]]
    for r in rows_a:
        r["reference"] = r["methods"]["cpsat"]["makespan"]
    total = len(res["A"]["rows"])
    print(f"Tier A instances CP-SAT proved optimal within its limit: {len(rows_a)}/{total}")
    if rows_a:
        table("A", rows_a, "optimum")


def _report_b(res: dict[str, Any], table: Table) -> None:
    for r in res["B"]["rows"]:
        r["reference"] = r["methods"]["cpsat"]["bound"]
    table("B", res["B"]["rows"], "CP-SAT bound")
    for r in res["B"]["rows"]:
        ms = {k: v["makespan"] for k, v in r["methods"].items()}
        print(f"  B {r['size']} jobs: " + ", ".join(f"{k} {v}" for k, v in ms.items()))


def _report_c(res: dict[str, Any]) -> None:
    print("\nTier C (weighted tardiness; FIFO ÷ method, higher is better):")
    for meth in res["C"]["rows"][0]["methods"]:
        wt = [
            r["methods"]["fifo"]["weighted_tardiness"]
            / max(1, r["methods"][meth]["weighted_tardiness"])
            for r in res["C"]["rows"]
        ]
        co = [
            1 - r["methods"][meth]["changeover"] / r["methods"]["fifo"]["changeover"]
            for r in res["C"]["rows"]
        ]
        cut = 100 * statistics.mean(co)
        print(f"  {meth:<13} tardiness ÷ {statistics.mean(wt):8.1f}   changeover −{cut:5.1f} %")


# --- lights out: a week with operator shifts ---------------------------------

WEEK_START = dt.datetime(2026, 12, 7, 0, 0)  # a Monday, problem time 0
WEEKDAYS = frozenset(range(5))
TWO_SHIFTS = (
    Shift(WEEKDAYS, dt.time(6), dt.time(14)),
    Shift(WEEKDAYS, dt.time(14), dt.time(22)),
)
CLEAR_MIN = 5  # clearing a printer's bed: prints here have no unload step


def with_operators(base: Problem, shifts: tuple[Shift, ...], days: int) -> Problem:
    """`base` with manual work: every printer changeover (purge, nozzle), a mill's
    fixture change (a tool change alone is automatic: the tool changer), bed
    clearing after each print; operator shifts in Europe/Berlin."""
    manual = frozenset(
        (m.id, a, b)
        for m in base.machines
        for a, row in base.setup_times[m.id].items()
        for b in row
        if m.id.startswith("P") or a.split("-")[1] != b.split("-")[1]
    )
    jobs = tuple(
        dataclasses.replace(j, clear=CLEAR_MIN) if next(iter(j.durations)).startswith("P") else j
        for j in base.jobs
    )
    windows = Calendar("Europe/Berlin", WEEK_START, shifts, (), days).windows(60)
    return dataclasses.replace(base, jobs=jobs, manual=manual, shifts=windows)


def night_idle_hours(problem: Problem, p: Plan) -> float:
    """Machine-hours outside the shifts, before the plan's end, with the machine doing nothing."""
    shifts = problem.shifts or ()
    horizon = p.figures.makespan
    total = 0
    for m in problem.machines:
        busy = sorted(
            (min(a.changeover_start, a.start), a.end) for a in p.assignments if a.machine == m.id
        )
        t = m.free_at
        for s, e in [*busy, (horizon, horizon)]:
            if s > t:  # idle in [t, s): count the part outside every shift
                total += (s - t) - sum(max(0, min(we, s) - max(ws, t)) for ws, we in shifts)
            t = max(t, e)
    return total / 60


def week(quick: bool) -> dict[str, Any]:
    base = cell_problem(600, 120 if quick else 250, 6, 4, Objective.WEIGHTED_TARDINESS)
    aware = with_operators(base, TWO_SHIFTS, 21)
    blind = dataclasses.replace(aware, shifts=None)
    budget = 1.0 if quick else 5.0
    plans = {
        "fifo": plan(aware, "fifo"),
        "group": plan(aware, "group"),
        "instant": plan(aware, "instant"),
        f"part 1 anytime {budget:g}s, pushed": evaluate(
            aware, plan(blind, "anytime", budget_s=budget, seed=1).sequences
        ),
        f"anytime {budget:g}s": plan(aware, "anytime", budget_s=budget, seed=1),
    }
    out = {}
    for name, p in plans.items():
        f = check(aware, p.assignments)
        assert f == p.figures
        out[name] = {
            "weighted_tardiness": f.weighted_tardiness,
            "changeover": f.changeover,
            "makespan": f.makespan,
            "night_idle_h": round(night_idle_hours(aware, p), 1),
            "iterations": p.iterations,
        }
    return out


def replan_time(reps: int) -> dict[str, float]:
    """The instant method on 5,000 steps (a re-plan of a large queue), median seconds."""
    prob = cell_problem(500, 5000, 6, 4, Objective.WEIGHTED_TARDINESS)
    times = {
        m: statistics.median(plan(prob, m).elapsed_s for _ in range(reps))
        for m in ("fifo", "instant")
    }
    return times


def _replan(problem: Problem) -> int:
    return plan(problem, "instant").figures.weighted_tardiness


def loop_lag() -> dict[str, dict[str, float]]:
    """A 5,000-step re-plan (instant) off the event loop: in a thread, in a process.

    The thread runs with the daemon's 1 ms switch interval; the process pays
    for pickling the problem and starting a worker (a daemon keeps one warm:
    measured here warm too).
    """
    prob = cell_problem(500, 5000, 6, 4, Objective.WEIGHTED_TARDINESS)
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    out: dict[str, dict[str, float]] = {}
    try:
        out["idle"] = asyncio.run(lag_while(None, idle_s=1.0))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:

            async def in_thread() -> None:
                await asyncio.get_running_loop().run_in_executor(pool, _replan, prob)

            out["thread"] = asyncio.run(lag_while(in_thread, idle_s=0))
        with concurrent.futures.ProcessPoolExecutor(1) as procs:
            procs.submit(_replan, cell_problem(1, 5, 1, 0, Objective.MAKESPAN)).result()

            async def in_process() -> None:
                await asyncio.get_running_loop().run_in_executor(procs, _replan, prob)

            out["process"] = asyncio.run(lag_while(in_process, idle_s=0))
    finally:
        sys.setswitchinterval(old)
    return out


def gantt(problem: Problem, p: Plan, slot: int = 30, hours: int = 48) -> str:
    """A text Gantt: one row per machine, one character per `slot` minutes.

    # a job runs · M manual changeover · a automatic changeover · c bed clearing
    · . idle; the top row shows the operator shifts (=).
    """
    cols = hours * 60 // slot
    rows = [
        "shift  "
        + "".join(
            "="
            if any(ws <= k * slot and (k + 1) * slot <= we for ws, we in problem.shifts or ())
            else " "
            for k in range(cols)
        )
    ]
    setups = {j.id: j for j in problem.jobs}
    for m in problem.machines:
        line = ["."] * cols
        for a in p.assignments:
            if a.machine != m.id:
                continue
            _paint(line, slot, a.start, a.end, "#")
            if a.changeover:
                manual = problem.is_manual(m.id, a.setup_before, setups[a.job].setup)
                end = a.changeover_start + a.changeover
                _paint(line, slot, a.changeover_start, end, "M" if manual else "a")
            if a.clear_start is not None:
                _paint(line, slot, a.clear_start, a.clear_start + setups[a.job].clear, "c")
        rows.append(f"{m.id:<6} " + "".join(line))
    hours_row = "".join(f"{(k * slot // 60) % 24:<12}" for k in range(0, cols, 360 // slot))
    return "\n".join(["hour   " + hours_row, *rows])


def _paint(line: list[str], slot: int, s: int, e: int, ch: str) -> None:
    for k in range(s // slot, min(len(line), -(-e // slot))):
        line[k] = ch


def show_gantt() -> None:
    base = cell_problem(700, 16, 3, 0, Objective.WEIGHTED_TARDINESS)
    one_shift = (Shift(WEEKDAYS, dt.time(6), dt.time(14)),)
    aware = with_operators(base, one_shift, 7)
    blind = dataclasses.replace(aware, shifts=None)
    for name, p in (
        (
            "planned without the calendar, manual work pushed into the shift",
            evaluate(aware, plan(blind, "anytime", iterations=300, seed=1).sequences),
        ),
        ("planned with the calendar", plan(aware, "anytime", iterations=300, seed=1)),
    ):
        f = check(aware, p.assignments)
        print(
            f"{name}: weighted tardiness {f.weighted_tardiness}, changeover "
            f"{f.changeover} min, makespan {f.makespan} min, night idle "
            f"{night_idle_hours(aware, p):.1f} machine-hours"
        )
        print(gantt(aware, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--tiers", default="ABCW", help="A, B, C; W: the lights-out week")
    ap.add_argument("--gantt", action="store_true", help="only print the lights-out Gantt")
    args = ap.parse_args()
    if args.gantt:
        show_gantt()
        return
    res: dict[str, Any] = {"instant_ms": instant_time(5 if args.quick else 30)}
    res["A"] = tier_a(args.quick) if "A" in args.tiers else {"rows": []}
    res["B"] = tier_b(args.quick) if "B" in args.tiers else {"rows": []}
    res["C"] = tier_c(args.quick) if "C" in args.tiers else {"rows": []}
    if "W" in args.tiers:
        res["week"] = week(args.quick)
        res["replan_s"] = replan_time(1 if args.quick else 3)
        res["loop_lag"] = loop_lag()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    report(res)


if __name__ == "__main__":
    main()
