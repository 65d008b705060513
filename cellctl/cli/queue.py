"""`cellctl priority JOB N` and `cellctl programs`: the queue's order and the program store,
over MQTT (`set_priority` and `programs`, docs/mqtt.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cellctl.cli.common import EXIT_FAIL, EXIT_OK, json_mode, print_json
from cellctl.cli.devices import connect
from cellctl.cli.mqtt import add_remote_options

PAGE = 500  # programs asked for per command (the cell allows up to [commands] jobs_page_max)


def cmd_priority(args: argparse.Namespace) -> int:
    remote = connect(args)
    try:
        reply = remote.command("set_priority", {"job": args.job, "priority": args.priority})
    finally:
        remote.close()
    if reply.get("outcome") != "accepted":
        print(f"priority {args.job}: rejected: {reply.get('reason')}", file=sys.stderr)
        return EXIT_FAIL
    result = reply.get("result") or {}
    if json_mode():
        print_json(result)
    else:
        print(f"job {args.job}: priority {result.get('priority')} ({result.get('state')})")
    return EXIT_OK


def cmd_programs(args: argparse.Namespace) -> int:
    remote = connect(args)
    programs: list[dict[str, Any]] = []
    body: dict[str, Any] = {"limit": PAGE}
    try:
        while True:
            reply = remote.command("programs", body)
            if reply.get("outcome") != "accepted":
                print(f"programs: rejected: {reply.get('reason')}", file=sys.stderr)
                return EXIT_FAIL
            programs.extend(reply.get("result") or [])
            page = reply.get("page") or {}
            if not page.get("more"):
                break
            body = {"limit": PAGE, "after": page["after"]}
    finally:
        remote.close()
    if json_mode():
        print_json(programs)
        return EXIT_OK
    print(render(programs))
    return EXIT_OK


def render(programs: list[dict[str, Any]]) -> str:
    rows = [("PROGRAM", "NAME", "SIZE", "STORED", "LAST JOB")]
    for p in programs:
        stored = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(p.get("stored") or 0)))
        rows.append(
            (
                f"sha256:{str(p.get('sha256'))[:12]}",
                str(p.get("name") or "-"),
                _size(int(p.get("size") or 0)),
                stored,
                str(p.get("last_job") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n} {unit}"
        n //= 1000
    return f"{n} GB"


def add_commands(sub: Any) -> None:
    common = add_remote_options

    p = sub.add_parser("priority", help="change an unfinished job's priority (larger runs first)")
    common(p)
    p.add_argument("job")
    p.add_argument("priority", type=int, help="-1000 … 1000")
    p.set_defaults(func=cmd_priority)

    p = sub.add_parser("programs", help="the programs stored in the cell (sha256:<hex>)")
    common(p)
    p.set_defaults(func=cmd_programs)
