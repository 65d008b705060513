"""`cellctl plan -c CONFIG`: the running cell's plan, read from its retained topics.

The table comes from `plan` (payload.plan); `--svg` draws it with gantt.py on
the problem from `plan/problem`, and `--export` writes that problem in the
offline format, so that `cellctl plan --problem FILE.json` replays it. Both
messages come from the same re-plan when their `origin`s agree; a reader that
catches them between two re-plans waits for the pair (bounded by --timeout).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import queue
import sys
import time
from typing import Any

from cellctl.cli.common import json_mode, print_json
from cellctl.cli.mqtt import Remote, target_from
from cellctl.config import load_settings
from cellctl.planning.published import change_text

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def read_plan(remote: Remote) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The retained plan and its problem (None, None: the cell published none)."""
    plan_topic, problem_topic = remote.topics.plan, remote.topics.plan_problem
    remote.subscribe(plan_topic)
    remote.subscribe(problem_topic)
    got: dict[str, dict[str, Any]] = {}
    until = time.monotonic() + remote.timeout
    quiet = time.monotonic() + 1.0  # retained messages arrive at once
    while True:
        if (
            plan_topic in got
            and problem_topic in got
            and got[plan_topic].get("origin") == got[problem_topic].get("origin")
        ):
            break
        left = min(until, quiet if not got else until) - time.monotonic()
        if left <= 0:
            break
        try:
            msg = remote.inbox.get(timeout=left)
        except queue.Empty:
            break
        try:
            got[msg.topic] = json.loads(msg.payload)
        except ValueError:
            continue
    return got.get(plan_topic), got.get(problem_topic)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def render_live(doc: dict[str, Any], now: float) -> str:
    lines = [f"plan of {_when(doc['origin'])} ({doc['method']}), now {_when(now)}"]
    for device, steps in doc["devices"].items():
        lines.append(f"{device}: {len(steps)} step{'s' if len(steps) != 1 else ''}")
        for s in steps:
            extra = ""
            if s["changeover_s"]:
                how = "manual " if s["manual"] else ""
                change = change_text(s["changeover_from"], s["setup"])
                extra = (
                    f"  ({how}changeover {s['changeover_s'] / 60:.1f} min from "
                    f"{_when(s['changeover_start'])}: {change})"
                )
            if s.get("clear_start") is not None:
                extra += f"  (bed cleared from {_when(s['clear_start'])})"
            lines.append(f"    {_when(s['start'])}–{_when(s['end'])}  {s['job']}{extra}")
    f = doc["figures"]
    lines.append(
        f"weighted tardiness {f['weighted_tardiness'] / 60:.1f} min, changeover "
        f"{f['changeover_s'] / 60:.1f} min, last end {_when(f['makespan'])}"
    )
    work = doc.get("worklist") or []
    if work:
        lines.append("operator worklist:")
        lines.extend(f"    {row}" for row in worklist_lines(work, now))
    if doc.get("learned"):
        from cellctl.cli import learned_view

        lines.extend(learned_view.lines(doc["learned"]))
    return "\n".join(lines)


def worklist_lines(work: list[dict[str, Any]], now: float) -> list[str]:
    from cellctl.telemetry.worklist import worklist_rows

    return ["  ".join(r) for r in worklist_rows(work, now)]


def cmd_live(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else None  # ConfigError: exit 2
    remote = Remote.connect(target_from(args, settings), args.timeout)
    try:
        doc, problem = read_plan(remote)
    finally:
        remote.close()
    if doc is None:
        print(
            f"cellctl plan: cell {remote.topics.cell} published no plan "
            '(is [scheduler] method = "planner"?)',
            file=sys.stderr,
        )
        return EXIT_FAIL
    now = time.time()
    if (args.svg or args.export) and (problem is None or problem["origin"] != doc["origin"]):
        print("cellctl plan: the plan's problem did not arrive (re-planning?)", file=sys.stderr)
        return EXIT_FAIL
    if args.export:
        assert problem is not None
        try:
            with open(args.export, "w", encoding="utf-8") as out:
                json.dump(problem["problem"], out, indent=1)
                out.write("\n")
        except OSError as exc:
            print(f"{args.export}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_FAIL
    if args.svg:
        assert problem is not None
        from cellctl.planning import parse_problem
        from cellctl.planning.gantt import gantt_svg
        from cellctl.planning.live_view import plan_from_payload

        shift = int(problem.get("shift", 0))
        prob = parse_problem(problem["problem"])
        result = plan_from_payload(doc, shift)
        title = f"cell {remote.topics.cell}, plan of {_when(doc['origin'])}"
        try:
            with open(args.svg, "w", encoding="utf-8") as out:
                out.write(
                    gantt_svg(prob, result, now=round(now - doc["origin"]) + shift, title=title)
                )
        except OSError as exc:
            print(f"{args.svg}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_FAIL
    if json_mode():
        print_json(doc)
    else:
        print(render_live(doc, now))
    return EXIT_OK
