"""`cellctl devices`, `pause|resume|stop|reset DEVICE`, `reset --all`, `maintain`: over MQTT.

They send the cell's own commands (docs/mqtt.md) and print one line per device.
`reset --all` is the way back after an emergency stop: every device that is
`aborted` or `stopped` gets its driver's recovery (RECOVERY below, and README
"After an emergency stop"), and the output says what each did.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from cellctl.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    json_mode,
    print_json,
)
from cellctl.cli.mqtt import (
    Remote,
    add_remote_options,
    target_from,
)
from cellctl.config import load_settings

# What `reset` makes each driver do (the drivers' reset(); docs/recovery.md).
RECOVERY = {
    "marlin": "M999 (or a DTR pulse with reset_method = dtr), then a new handshake",
    "grbl": "soft reset (Ctrl-X), then $H homing if position was lost, else $X unlock",
    "opcua": "the robot's reset method, then it waits for the robot's ready state",
    "modbus": "the config's reset sequence (estop coil off, reset coil pulsed)",
}
RESETTABLE = ("aborted", "stopped", "complete")
# States a device passes through on its way back to idle after a reset.
SETTLING = ("aborted", "aborting", "stopped", "stopping", "clearing", "resetting")
# A reset can home a machine: give it longer than one command.
RESET_TIMEOUT_S = 60.0
SETTLE_S = 30.0


def connect(args: argparse.Namespace, timeout: float | None = None) -> Remote:
    settings = load_settings(args.config) if args.config else None  # ConfigError: exit 2
    return Remote.connect(target_from(args, settings), timeout or args.timeout)


def _rejected(what: str, reply: Mapping[str, Any]) -> int:
    print(f"{what}: rejected: {reply.get('reason') or 'no reason given'}", file=sys.stderr)
    return EXIT_FAIL


def list_devices(remote: Remote) -> list[dict[str, Any]]:
    reply = remote.command("devices", {})
    if reply.get("outcome") != "accepted":
        from cellctl.errors import CellError

        raise CellError(f"devices: rejected: {reply.get('reason')}")
    return list(reply.get("result") or [])


def settle(remote: Remote, device: str, state: str, within_s: float = SETTLE_S) -> str:
    """The device's state once it left the reset's way stations (a robot's reset method
    returns before the robot reports ready), or the last one seen after `within_s`."""
    deadline = time.monotonic() + within_s
    while state in SETTLING and time.monotonic() < deadline:
        time.sleep(0.3)
        found = [d for d in list_devices(remote) if d["id"] == device]
        state = str(found[0].get("state")) if found else "unknown"
    return state


def render_devices(devices: list[dict[str, Any]]) -> str:
    rows = [("DEVICE", "DRIVER", "STATE", "SERVICE", "SETUP", "STEP")]
    for d in devices:
        setup = ", ".join(f"{k}={v}" for k, v in sorted((d.get("setup") or {}).items()))
        service = "in" if d.get("in_service", True) else "OUT"
        state = d.get("state", "?") + (" (busy)" if d.get("busy") and not d.get("step") else "")
        rows.append(
            (d["id"], d.get("driver", ""), state, service, setup or "-", d.get("step") or "-")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_devices(args: argparse.Namespace) -> int:
    remote = connect(args)
    try:
        devices = list_devices(remote)
    finally:
        remote.close()
    if json_mode():
        print_json(devices)
    else:
        print(render_devices(devices))
    return EXIT_OK


def cmd_device_action(args: argparse.Namespace) -> int:
    name: str = args.action
    if name == "reset" and args.all:
        if args.device:
            print("cellctl reset: give a DEVICE or --all, not both", file=sys.stderr)
            return EXIT_USAGE
        return reset_all(args)
    if not args.device:
        print(f"cellctl {name}: which device? (`cellctl devices` lists them)", file=sys.stderr)
        return EXIT_USAGE
    timeout = max(args.timeout, RESET_TIMEOUT_S) if name == "reset" else args.timeout
    remote = connect(args, timeout)
    try:
        reply = remote.command(name, {"device": args.device})
    finally:
        remote.close()
    if reply.get("outcome") != "accepted":
        return _rejected(f"{name} {args.device}", reply)
    result = dict(reply.get("result") or {})
    if name == "reset":
        remote = connect(args)
        try:
            result["state"] = settle(remote, args.device, str(result.get("state")))
        finally:
            remote.close()
    if json_mode():
        print_json(result)
    else:
        print(f"{args.device}: {name} done, now {result.get('state', '?')}")
    return EXIT_OK if name != "reset" or result["state"] == "idle" else EXIT_FAIL


def reset_all(args: argparse.Namespace) -> int:
    """Reset every device an emergency stop (or an alarm) left aborted or stopped."""
    remote = connect(args, max(args.timeout, RESET_TIMEOUT_S))
    done: list[dict[str, Any]] = []
    failed = 0
    try:
        for d in list_devices(remote):
            entry = {"device": d["id"], "driver": d.get("driver"), "before": d.get("state")}
            if d.get("state") not in RESETTABLE:
                entry.update(action="none", after=d.get("state"))
                done.append(entry)
                continue
            reply = remote.command("reset", {"device": d["id"]})
            recovery = RECOVERY.get(str(d.get("driver")), "the driver's reset()")
            if reply.get("outcome") == "accepted":
                after = settle(remote, d["id"], str((reply.get("result") or {}).get("state")))
                entry.update(action="reset", recovery=recovery, after=after)
                failed += after != "idle"
            else:
                failed += 1
                entry.update(action="failed", recovery=recovery, reason=reply.get("reason"))
            done.append(entry)
    finally:
        remote.close()
    if json_mode():
        print_json(done)
    else:
        for e in done:
            if e["action"] == "none":
                print(f"{e['device']}: {e['before']}, nothing to reset")
            elif e["action"] == "reset":
                print(f"{e['device']}: {e['before']} -> {e['after']} ({e['recovery']})")
            else:
                print(f"{e['device']}: reset failed: {e['reason']}")
    return EXIT_FAIL if failed else EXIT_OK


def cmd_maintain(args: argparse.Namespace) -> int:
    body = {"device": args.device, "lines": list(args.lines), "reason": args.reason}
    remote = connect(args, max(args.timeout, RESET_TIMEOUT_S))
    try:
        reply = remote.command("maintain", body)
    finally:
        remote.close()
    if reply.get("outcome") != "accepted":
        return _rejected(f"maintain {args.device}", reply)
    result = reply.get("result") or {}
    if json_mode():
        print_json(result)
        return EXIT_OK
    for x in result.get("lines", []):
        print(f"{args.device}: {x['line']} -> {x['answer']}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Hook for cellctl.cli: the device commands."""

    common = add_remote_options

    p = sub.add_parser("devices", help="every device: state, what is loaded, its step")
    common(p)
    p.set_defaults(func=cmd_devices)

    helps = {
        "pause": "pause the step running on a device",
        "resume": "resume a paused device",
        "stop": "stop the step running on a device (controlled)",
        "reset": "leave aborted/stopped (after an emergency stop or alarm); --all: every device",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("device", nargs="?" if name == "reset" else None, default=None)
        if name == "reset":
            p.add_argument(
                "--all",
                action="store_true",
                help="every aborted or stopped device, each with its driver's recovery",
            )
        p.set_defaults(func=cmd_device_action, action=name, all=False)

    p = sub.add_parser(
        "maintain",
        help="send privileged lines (M500, M92, $130=…) to an idle device; audited",
        description="Needs the `maintain` permission (role maintenance or admin); "
        "the device must be idle. See docs/mqtt.md, 'Maintenance lines'.",
    )
    common(p)
    p.add_argument("device")
    p.add_argument("lines", nargs="+", metavar="LINE", help="one G-code or $ line each")
    p.add_argument("--reason", required=True, help="why (kept in the audit)")
    p.set_defaults(func=cmd_maintain)
