"""`cellctl plan --problem FILE.json`: plan an offline problem, print the plan and its figures.
Without `--problem`: the running cell's plan (`-c CONFIG`), cellctl/cli/plan_live.py.

Anyone can compare the planner with the naive rules on their own data
(`--method`). Bad input is one line per mistake and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from cellctl.cli.common import add_config
from cellctl.cli.mqtt import DEFAULT_TIMEOUT_S, add_target_options
from cellctl.planning.methods import METHODS

if TYPE_CHECKING:
    from cellctl.planning.model import Plan, Problem

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="plan an offline problem (JSON), or show the running cell's plan",
        description="Plan the jobs of a problem file (schema: cellctl/schemas/problem.json); "
        "without --problem, print the running cell's plan (its retained `plan` topic).",
    )
    p.add_argument(
        "--problem", metavar="FILE.json", help="the problem (without it: the running cell's)"
    )
    add_config(p, needed=False)
    add_target_options(p)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument(
        "--export",
        metavar="FILE.json",
        help="the running cell: write its problem (replay: cellctl plan --problem FILE.json)",
    )
    p.add_argument("--method", choices=METHODS, default="anytime")
    p.add_argument(
        "--budget-s", type=float, default=1.0, metavar="S", help="anytime: seconds (default 1)"
    )
    p.add_argument(
        "--unpin-margin",
        type=float,
        default=None,
        metavar="F",
        help="free the pinned jobs if a plan without them is better by more than F (0.1: 10 %%)",
    )
    p.add_argument("--seed", type=int, default=0, help="anytime: random seed (default 0)")
    p.add_argument(
        "--start",
        metavar="PLAN.json",
        help="anytime: improve this earlier plan (as --json writes it) instead of building one",
    )
    p.add_argument("--json", action="store_true", help="write the plan as JSON (plan.json schema)")
    p.add_argument(
        "--svg", metavar="FILE.svg", help="also draw the plan as a Gantt chart into this file"
    )
    p.add_argument("--now", type=int, metavar="T", help="--svg: draw a now-line at time T")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    # The planner and the drawing load here, not with the parser that `cellctl run` builds.
    from cellctl.planning.calendar import OutsideCalendar
    from cellctl.planning.gantt import gantt_svg
    from cellctl.planning.planner import plan
    from cellctl.planning.problem_format import ProblemInvalid, parse_problem, plan_to_json

    name = args.problem
    if name is None:
        from cellctl.cli.plan_live import cmd_live

        return cmd_live(args)
    if args.export:
        print("cellctl plan: --export is for the running cell (no --problem)", file=sys.stderr)
        return EXIT_USAGE
    if args.unpin_margin is not None and not 0 <= args.unpin_margin <= 1:
        print(
            f"cellctl plan: --unpin-margin must be in 0 … 1, got {args.unpin_margin}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.budget_s >= 0:
        print(f"cellctl plan: --budget-s must be ≥ 0, got {args.budget_s}", file=sys.stderr)
        return EXIT_USAGE
    if args.start is not None and args.method != "anytime":
        print("cellctl plan: --start needs --method anytime", file=sys.stderr)
        return EXIT_USAGE
    raw = _read_json(name)
    if raw is _UNREAD:
        return EXIT_USAGE
    start = None
    if args.start is not None:
        doc = _read_json(args.start)
        if doc is _UNREAD:
            return EXIT_USAGE
        machines = doc.get("machines") if isinstance(doc, dict) else None
        if not isinstance(machines, dict) or not all(
            isinstance(v, list) and all(isinstance(j, str) for j in v) for v in machines.values()
        ):
            print(
                f"{args.start}: machines: expected an object machine → [job ids] "
                "(a plan as `cellctl plan --json` writes it)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        start = machines
    try:
        problem = parse_problem(raw)
    except ProblemInvalid as exc:
        for line in exc.problems:
            print(f"{name}: {line}", file=sys.stderr)
        n = len(exc.problems)
        print(f"problem invalid: {n} mistake{'s' if n != 1 else ''}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = plan(
            problem,
            args.method,
            budget_s=args.budget_s,
            seed=args.seed,
            unpin_margin=args.unpin_margin,
            start=start,
        )
    except OutsideCalendar as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.svg:
        try:
            with open(args.svg, "w", encoding="utf-8") as out:
                out.write(gantt_svg(problem, result, now=args.now, title=name))
        except OSError as exc:
            print(f"{args.svg}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_FAIL
    if args.json:
        json.dump(plan_to_json(problem, result), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(problem, result))
    return EXIT_OK


_UNREAD: Any = object()  # a file that could not be read as JSON (the reason is printed)


def _read_json(name: str) -> Any:
    try:
        with open(name, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        print(f"{name}: file not found", file=sys.stderr)
    except OSError as exc:
        print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
    except UnicodeDecodeError as exc:
        print(f"{name}: not UTF-8 text (byte {exc.start})", file=sys.stderr)
    except json.JSONDecodeError as exc:
        print(
            f"{name}: not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=sys.stderr
        )
    except RecursionError:
        print(f"{name}: not JSON this planner reads: nested too deeply", file=sys.stderr)
    return _UNREAD


def render(problem: Problem, result: Plan) -> str:
    u = problem.time_unit
    f = result.figures
    setups = {j.id: j.setup for j in problem.jobs}
    lines = []
    by_machine: dict[str, list[str]] = {m.id: [] for m in problem.machines}
    for a in result.assignments:
        co = ""
        if a.changeover:
            how = "manual " if problem.is_manual(a.machine, a.setup_before, setups[a.job]) else ""
            co = (
                f"  ({how}changeover {a.changeover} {u} from {a.changeover_start}: "
                f"{a.setup_before} → {setups[a.job]})"
            )
        if a.clear_start is not None:
            co += f"  (bed cleared from {a.clear_start})"
        for d, held_from, held_to in a.reserved:
            co += f"  (holds {d} {held_from}–{held_to})"
        by_machine[a.machine].append(f"    {a.start:>7}–{a.end:<7} {a.job}{co}")
    for mid, rows in by_machine.items():
        lines.append(f"{mid}: {len(rows)} job{'s' if len(rows) != 1 else ''}")
        lines.extend(rows)
    extra = f", {result.iterations} iterations" if result.method == "anytime" else ""
    lines.append(
        f"{result.method}: weighted tardiness {f.weighted_tardiness}, "
        f"changeover {f.changeover} {u}, makespan {f.makespan} {u} "
        f"(objective {problem.objective.value}); "
        f"planned in {result.elapsed_s * 1000:.1f} ms{extra}"
    )
    return "\n".join(lines)
