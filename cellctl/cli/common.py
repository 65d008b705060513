"""One grammar for every `cellctl` command: where the config comes from, how output looks.

The config is `-c/--config FILE` on every command that reads one; without it,
`$CELLCTL_CONFIG`, then `./cell.toml`. The old positional form (`cellctl jobs
cell.toml`) still works for this release and warns: the systemd unit and
scripts written against it keep running while they are changed.

`--json` on a command prints what it found or did as one JSON document on
stdout (errors stay one line on stderr, with the same exit codes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from cellctl.errors import UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CONFIG_ENV = "CELLCTL_CONFIG"
DEFAULT_CONFIG = "cell.toml"
DEPRECATED_POSITIONAL = (
    "warning: the config as a positional argument is deprecated and goes in the next "
    "release; use -c {path}"
)

_json_mode = False


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_config(p: argparse.ArgumentParser, *, legacy: bool = False, needed: bool = True) -> None:
    """`-c/--config`; `legacy`: the command took the config as its first positional before."""
    p.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"the cell's TOML config (default: ${CONFIG_ENV}, then ./{DEFAULT_CONFIG})",
    )
    if legacy:
        p.add_argument("legacy_config", nargs="?", default=None, help=argparse.SUPPRESS)
    p.set_defaults(config_needed=needed)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def resolve_config(args: argparse.Namespace) -> None:
    """Settle `args.config`: the option, the old positional (warned), the environment,
    ./cell.toml. UsageError when a command needs one and none is found."""
    if not hasattr(args, "config_needed"):
        return
    legacy = getattr(args, "legacy_config", None)
    if legacy is not None:
        if args.config is not None:
            raise UsageError(f"the config given twice: -c {args.config} and {legacy}")
        print(DEPRECATED_POSITIONAL.format(path=legacy), file=sys.stderr)
        args.config = legacy
    if args.config is None:
        env = os.environ.get(CONFIG_ENV)
        if env:
            args.config = env
        elif Path(DEFAULT_CONFIG).is_file():
            args.config = DEFAULT_CONFIG
        elif args.config_needed:
            raise UsageError(
                f"no config: give -c FILE, set {CONFIG_ENV}, or run where {DEFAULT_CONFIG} is"
            )


def set_json(on: bool) -> None:
    global _json_mode
    _json_mode = on


def json_mode() -> bool:
    return _json_mode


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
