"""`cellctl completion bash|zsh|tcsh`: a shell completion script, generated from the parser.

shtab writes it from the same argparse tree `cellctl` parses with, so it can never
name an option the command does not have. Install it once, e.g. for bash:
`cellctl completion bash | sudo tee /etc/bash_completion.d/cellctl`.
"""

from __future__ import annotations

import argparse
from typing import Any

from cellctl.cli.common import EXIT_OK, add_json, json_mode, print_json

SHELLS = ("bash", "zsh", "tcsh")


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from cellctl.cli.main import build_parser

    script = shtab.complete(build_parser(), shell=args.shell)
    if json_mode():
        print_json({"shell": args.shell, "script": script})
    else:
        print(script, end="")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)")
    p.add_argument("shell", choices=SHELLS)
    add_json(p)
    p.set_defaults(func=cmd_completion)
