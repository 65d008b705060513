"""`cellctl report -c CONFIG [--since WHEN] [--until WHEN]`: the shift report from the
cell's store (read-only: the daemon may be running). cellctl/shift_report.py builds it.

WHEN is an ISO time (`2026-12-06T06:00`, local unless it names a zone) or a
span before now (`8h`, `90m`, `2d`); --since defaults to 8 h before --until,
which defaults to now.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sqlite3
import time
from typing import Any

from cellctl.cli.common import add_config, add_json, json_mode, print_json
from cellctl.config import load
from cellctl.errors import CellError, UsageError
from cellctl.store import DEFAULT_FILE

EXIT_OK = 0
SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float) -> float:
    m = SPAN.match(text.strip())
    if m:
        return now - float(m.group(1)) * UNIT_S[m.group(2)]
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r}: expected an ISO time (2026-12-06T06:00) or a span before now (8h, 90m)"
        ) from None
    return at.timestamp()  # naive: local time


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="the shift report: jobs done, utilisation, changeovers and FIFO's, lateness",
        description="The shift report from the cell's store (daemon running or not).",
    )
    add_config(p)
    p.add_argument("--since", default="8h", metavar="WHEN", help="ISO time or span (default 8h)")
    p.add_argument("--until", default=None, metavar="WHEN", help="ISO time or span (default now)")
    add_json(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from cellctl import shift_report

    now = time.time()
    until = now if args.until is None else parse_when(args.until, now)
    since = parse_when(args.since, until if SPAN.match(args.since.strip()) else now)
    if since >= until:
        raise UsageError("--since must lie before --until")
    cell = load(args.config)
    path = cell.state_dir / DEFAULT_FILE
    if not path.is_file():
        raise CellError(f"no store at {path}: has the daemon run with this config?")
    try:
        report = shift_report.build_from(path, cell, since, until)
    except sqlite3.Error as exc:
        raise CellError(f"cannot read {path}: {exc}") from None
    if json_mode():
        print_json(report)
    else:
        print(shift_report.render(report))
    return EXIT_OK
