"""`cellctl status/ack/estop`: the CLI talks to a running cell over MQTT.

It uses the same interface as any MES or dashboard: the retained topics for
status, and the command topics (MQTT 5 response topic + correlation data)
for everything that changes something. The broker address and the cell name
come from the cell's config file (`-c`), or `--host/--port/--cell`. The job
commands (`jobs`, `submit`, `cancel` …) are in jobs.py and jobs_remote.py.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from typing import Any

import paho.mqtt.client as paho

from cellctl.cli.common import json_mode, print_json
from cellctl.cli.mqtt import (
    Remote,
    add_remote_options,
    target_from,
)
from cellctl.config import load_settings
from cellctl.telemetry.statusview import StatusView
from cellctl.telemetry.worklist import COLUMNS as WORKLIST_COLUMNS
from cellctl.telemetry.worklist import worklist_rows

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _connect(args: argparse.Namespace) -> Remote:
    settings = load_settings(args.config) if args.config else None  # ConfigError: exit 2
    return Remote.connect(target_from(args, settings), args.timeout)


def _show_reply(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    if reply.get("outcome") == "accepted":
        result = reply.get("result")
        if json_mode():
            print_json(result)
        else:
            print(args.human(args, result))
        return EXIT_OK
    print(f"{args.command}: rejected: {reply.get('reason')}", file=sys.stderr)
    return EXIT_FAIL


def cmd_simple(args: argparse.Namespace) -> int:
    remote = _connect(args)
    try:
        return _show_reply(args, remote.command(args.remote_command, args.build(args)))
    finally:
        remote.close()


def _estop_said(args: argparse.Namespace, result: Any) -> str:
    r = result if isinstance(result, dict) else {}
    parts = [f"emergency stop: stopped {', '.join(r.get('stopped', [])) or 'nothing'}"]
    for dev, why in sorted((r.get("failed") or {}).items()):
        parts.append(f"{dev} FAILED ({why})")
    if r.get("not_connected"):
        parts.append(f"not connected: {', '.join(r['not_connected'])}")
    parts.append(f"in {r.get('elapsed_ms', '?')} ms; after it: cellctl reset --all")
    return "; ".join(parts)


def _ack_said(args: argparse.Namespace, result: Any) -> str:
    r = result if isinstance(result, dict) else {}
    job = r.get("id")
    return f"{args.device}: {args.kind} answered" + (
        f" (job {job} {r.get('state')})" if job else ""
    )


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

    remote = _connect(args)
    base = remote.topics.base
    remote.subscribe(f"{base}/#")
    view = StatusView(base)

    def absorb(msg: paho.MQTTMessage) -> None:
        view.absorb(msg.topic, bytes(msg.payload))

    def table() -> Group:
        t = Table(title=f"cell {remote.topics.cell}: {view.cell.get('state', 'unknown')}")
        for col in StatusView.COLUMNS:
            t.add_column(col)
        for row in view.rows():
            t.add_row(*row)
        parts: list[Any] = [t]
        work = view.plan.get("worklist") or []
        if work:
            todo = Table(title="operator worklist (cellctl changeover / bed-clear)")
            for col in WORKLIST_COLUMNS:
                todo.add_column(col)
            for row in worklist_rows(work, time.time()):
                todo.add_row(*row)
            parts.append(todo)
        if not view.held:
            return Group(*parts)
        held = Table(title="held steps (cellctl answer CONFIG JOB STEP …)")
        for col in ("step", "device", "attempt", "reason"):
            held.add_column(col)
        for h in view.held:
            held.add_row(
                str(h.get("step")),
                str(h.get("device") or ""),
                str(h.get("attempt")),
                str(h.get("reason")),
            )
        return Group(*parts, held)

    def drain(until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                absorb(remote.inbox.get(timeout=left))
            except queue.Empty:
                return

    try:
        drain(time.monotonic() + 1.0)  # retained messages arrive at once
        if json_mode():
            print_json(
                {
                    "cell": remote.topics.cell,
                    **view.cell,
                    "devices": {
                        dev_id: {
                            "state": d.state,
                            "step": d.step or None,
                            "step_state": d.step_state or None,
                            "progress": d.progress,
                            "requests": d.requests,
                            "setup": d.setup,
                            "metrics": {k: v for k, (v, _) in d.values.items()},
                            "quality": {k: q for k, (_, q) in d.values.items()},
                            "units": d.units,
                        }
                        for dev_id, d in sorted(view.devices.items())
                    },
                    "held": view.held,
                    "worklist": view.plan.get("worklist") or [],
                }
            )
            return EXIT_OK if view.cell.get("state") == "online" else EXIT_FAIL
        if not args.watch:
            Console().print(table())
            return EXIT_OK if view.cell.get("state") == "online" else EXIT_FAIL
        with Live(table(), refresh_per_second=4) as live:
            while True:
                drain(time.monotonic() + 0.25)
                live.update(table())
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        remote.close()


def add_commands(sub: Any) -> None:
    """Hook for cellctl.cli: adds the remote commands to its subparsers."""

    common = add_remote_options

    st = sub.add_parser("status", help="devices, states, jobs and requests of a running cell")
    common(st)
    st.add_argument("--watch", action="store_true", help="a live table until Ctrl-C")
    st.set_defaults(func=cmd_status)

    ack = sub.add_parser("ack", help="answer an operator request (material loaded, bed cleared …)")
    common(ack)
    ack.add_argument("device")
    ack.add_argument("kind", choices=["load_material", "clear_bed", "change_tool", "acknowledge"])
    ack.set_defaults(
        func=cmd_simple,
        remote_command="answer",
        build=lambda a: {"device": a.device, "kind": a.kind},
        human=_ack_said,
    )

    estop = sub.add_parser("estop", help="emergency stop of every device (not a safety function)")
    common(estop)
    estop.add_argument("--reason", default="cellctl estop")
    estop.set_defaults(
        func=cmd_simple,
        remote_command="estop",
        build=lambda a: {"reason": a.reason},
        human=_estop_said,
    )
