"""The `cellctl` command line.

Exit codes: 0 success, 1 runtime failure, 2 invalid config or usage.
No input makes it print a traceback: errors are one clear message each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cellctl import __version__
from cellctl.access import Access
from cellctl.cli.common import (
    Parser,
    add_config,
    add_json,
    json_mode,
    print_json,
    resolve_config,
    set_json,
)
from cellctl.config import Cell, load
from cellctl.errors import CellError, ConfigError, UsageError
from cellctl.registry import Registry

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _print_problems(exc: ConfigError) -> None:
    for line in exc.problems:
        print(line, file=sys.stderr)
    n = len(exc.problems)
    print(f"config invalid: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)


def summarize(cell: Cell) -> str:
    lines = [
        f"cell {cell.name!r} from {cell.source}",
        f"state directory: {cell.state_dir}",
        f"devices: {len(cell.devices)}",
    ]
    for dev in cell.devices.values():
        flags: list[str] = [dev.common.backend]
        if not dev.common.enabled:
            flags.append("disabled")
        procs = ", ".join(dev.common.processes) or "no processes"
        lines.append(f"  {dev.id:<16} {dev.driver:<10} {' '.join(flags):<14} {procs}")
    lines.append("who may command the cell ([access]; docs/mqtt.md):")
    lines += Access.from_section(cell.config.access).describe()
    return "\n".join(lines)


def describe(cell: Cell, warnings: Sequence[str]) -> dict[str, Any]:
    """`cellctl check --json`: what the summary says, for scripts."""
    return {
        "cell": cell.name,
        "source": str(cell.source),
        "state_dir": str(cell.state_dir),
        "devices": [
            {
                "id": dev.id,
                "driver": dev.driver,
                "backend": dev.common.backend,
                "enabled": dev.common.enabled,
                "processes": list(dev.common.processes),
            }
            for dev in cell.devices.values()
        ],
        "warnings": list(warnings)
        + [f"devices.{d.id}.{w}" for d in cell.devices.values() for w in d.options.warnings()],
        "ok": True,
    }


def cmd_check(args: argparse.Namespace) -> int:
    """What `run` would refuse, refused in the same words (cellctl/startcheck.py)."""
    from cellctl import startcheck

    try:
        cell = load(args.config)
        warnings = startcheck.refuse(cell)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_USAGE
    from cellctl.cli import learned_view

    learned = learned_view.from_store(cell)
    if json_mode():
        print_json({**describe(cell, warnings), "learned": learned})
        return EXIT_OK
    print(summarize(cell))
    if learned is not None:
        print("\n".join(learned_view.lines(learned)))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for dev in cell.devices.values():
        for warning in dev.options.warnings():
            print(f"warning: {cell.source}: devices.{dev.id}.{warning}", file=sys.stderr)
    print("config OK")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from cellctl.app import run_daemon

    try:
        return run_daemon(Path(args.config), "json" if args.json else None)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_USAGE


def cmd_drivers(args: argparse.Namespace) -> int:
    reg = Registry()
    names = reg.driver_names()
    if json_mode():
        print_json(
            {
                "drivers": [{"name": n, "target": reg.driver_target(n)} for n in names],
                "simulators": list(reg.simulator_names()),
            }
        )
        return EXIT_OK
    if not names:
        print("no drivers installed")
    for name in names:
        try:
            cls = reg.driver(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:<10} {reg.driver_target(name):<48} {doc[0] if doc else ''}")
        except CellError as exc:
            print(f"{name:<10} BROKEN: {exc}")
    sims = reg.simulator_names()
    print("simulators: " + (", ".join(sims) if sims else "none"))
    return EXIT_OK


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_sim(args: argparse.Namespace) -> int:
    reg = Registry()
    try:
        cls = reg.simulator(args.name)
        raw = _parse_sets(args.set)
        if args.time_factor is not None:
            raw["time_factor"] = args.time_factor
        options = cls.Options.model_validate(raw)
    except ValidationError as exc:  # a ValueError too: caught first, one line each
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            print(f"cellctl sim {args.name}: {loc}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except (CellError, ValueError) as exc:
        print(f"cellctl sim: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from cellctl.logs import configure

    configure("info")  # logs to stderr: stdout carries only the endpoint

    from cellctl.simserve import serve

    asyncio.run(serve(cls, options, watch_stdin=args.watch_stdin))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cellctl", description="Run and inspect a microfactory cell.")
    p.add_argument("--version", action="version", version=f"cellctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the cell daemon")
    add_config(run, legacy=True)
    run.add_argument("--json", action="store_true", help="log JSON lines whatever the config says")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config and print a summary")
    add_config(check, legacy=True)
    add_json(check)
    check.set_defaults(func=cmd_check)

    drivers = sub.add_parser("drivers", help="list installed drivers and simulators")
    add_json(drivers)
    drivers.set_defaults(func=cmd_drivers)

    sim = sub.add_parser("sim", help="run a simulated device standalone; prints its endpoint")
    sim.add_argument("name", help="simulator name (see `cellctl drivers`)")
    sim.add_argument("--time-factor", type=float, default=None)
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a simulator option (repeatable)",
    )
    sim.add_argument(
        "--watch-stdin",
        action="store_true",
        help="stop when stdin closes (how the daemon runs its simulators)",
    )
    add_json(sim)
    sim.set_defaults(func=cmd_sim)

    from cellctl.cli.jobs import add_commands as add_job_commands

    add_job_commands(sub)

    from cellctl.cli.remote import add_commands

    add_commands(sub)  # status, ack, estop: over MQTT

    from cellctl.cli.backup import add_commands as add_backup

    add_backup(sub)
    from cellctl.cli.plan import add_commands as add_plan_commands

    add_plan_commands(sub)
    from cellctl.cli.report import add_commands as add_report_commands

    add_report_commands(sub)  # the shift report
    from cellctl.cli.panel import add_commands as add_panel_commands

    add_panel_commands(sub)  # panel, apikey
    from cellctl.cli.devices import add_commands as add_device_commands

    add_device_commands(sub)
    from cellctl.cli.queue import add_commands as add_queue_commands

    add_queue_commands(sub)  # priority, programs
    from cellctl.cli.completion import add_commands as add_completion

    add_completion(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_json(bool(getattr(args, "json", False)))
    try:
        resolve_config(args)
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:  # `cellctl jobs | head`: the reader left, nothing is wrong
        sys.stdout = None
        return EXIT_OK
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cellctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CellError as exc:
        print(f"cellctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except ValidationError as exc:  # a model built from arguments: one line, not pydantic's text
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        print(f"cellctl {args.command}: {loc}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a file or socket the command needed
        print(f"cellctl {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
