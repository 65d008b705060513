"""`cellctl panel` (the HTTP front end) and `cellctl apikey add|list|revoke` (its keys)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from cellctl.access import Access
from cellctl.cli.common import add_config, add_json, json_mode, print_json
from cellctl.config import load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def cmd_panel(args: argparse.Namespace) -> int:
    try:
        from cellctl.panel.serve import serve
    except ImportError as exc:  # aiohttp is the `panel` extra
        print(
            f"cellctl panel: {exc.name} is missing: pip install 'cellctl[panel]'", file=sys.stderr
        )
        return EXIT_FAIL
    from cellctl.logs import configure

    settings = load_settings(args.config)  # ConfigError: exit 2 in cli.main
    configure(settings.logging.level.value, settings.logging.format)
    asyncio.run(serve(Path(args.config)))
    return EXIT_OK


def _store(args: argparse.Namespace) -> Any:
    from cellctl.panel.serve import key_store

    return key_store(load_settings(args.config), Path(args.config))


def cmd_apikey_add(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = _store(args)
    record, key = store.add(args.user)
    access = Access.from_section(settings.access)
    if json_mode():
        print_json({"id": record.id, "user": record.user, "key": key})
    else:
        print(f"API key {record.id} for user {record.user!r} (shown once; store it now):")
        print(key)
    if not access.allowed(args.user, "submit"):
        print(
            f"warning: user {args.user!r} may not submit jobs ([access.users] of "
            f"{args.config}): the panel will answer 403 until a role gives it submit",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_apikey_list(args: argparse.Namespace) -> int:
    rows = _store(args).records()
    if json_mode():
        print_json([{"id": r.id, "user": r.user, "created": r.created} for r in rows])
        return EXIT_OK
    if not rows:
        print("no API keys")
    for r in rows:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        print(f"{r.id}  {r.user:<20} created {made}")
    return EXIT_OK


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    gone = _store(args).revoke(args.id)
    if json_mode():
        print_json({"id": gone.id, "user": gone.user, "revoked": True})
        return EXIT_OK
    print(f"revoked API key {gone.id} of user {gone.user!r}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Hook for cellctl.cli."""
    panel = sub.add_parser("panel", help="serve the HTTP front end (OctoPrint upload API)")
    add_config(panel)
    add_json(panel)
    panel.set_defaults(func=cmd_panel)

    key = sub.add_parser("apikey", help="API keys of the panel: add, list, revoke")
    add_config(key)
    verbs = key.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="make a key for USER (shown once)")
    add.add_argument("user")
    add.set_defaults(func=cmd_apikey_add)
    lst = verbs.add_parser("list", help="list keys (ids and users, never the keys)")
    lst.set_defaults(func=cmd_apikey_list)
    rev = verbs.add_parser("revoke", help="revoke the key with this id")
    rev.add_argument("id")
    rev.set_defaults(func=cmd_apikey_revoke)
    for p in (add, lst, rev):
        # Also after the verb (`apikey add alice -c cell.toml`); SUPPRESS keeps the
        # parent's value when it is not given here.
        p.add_argument(
            "-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=argparse.SUPPRESS
        )
        add_json(p)
