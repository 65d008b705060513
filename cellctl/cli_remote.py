"""`cellctl status/jobs/submit/cancel/ack/estop`: the CLI talks to a running cell over MQTT.

It uses the same interface as any MES or dashboard: the retained topics for
status, and the command topics (MQTT 5 response topic + correlation data)
for everything that changes something. The broker address and the cell name
come from the cell's config file (`-c`), or `--host/--port/--cell`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import queue
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cellctl.config import load
from cellctl.errors import CellError, ConfigError
from cellctl.telemetry.topics import DEFAULT_PREFIX, Topics

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class Remote:
    """A short-lived MQTT 5 client for one CLI invocation."""

    def __init__(self, host: str, port: int, topics: Topics, timeout: float) -> None:
        self.topics = topics
        self.timeout = timeout
        self.client_id = f"cellctl-cli-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"{topics.base}/replies/{self.client_id}"
        self.inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        user = os.environ.get("CELLCTL_MQTT_USERNAME")
        if user:
            self.c.username_pw_set(user, os.environ.get("CELLCTL_MQTT_PASSWORD"))
        self.c.on_message = lambda c, u, m: self.inbox.put(m)
        try:
            self.c.connect(host, port, keepalive=30)
        except OSError as exc:
            raise CellError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
        self.c.loop_start()

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, 1)

    def command(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.subscribe(self.reply_topic)
        time.sleep(0.1)  # let SUBACK arrive before the reply can
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        corr = uuid.uuid4().bytes
        props.CorrelationData = corr
        props.UserProperty = [("client_id", self.client_id), ("user", getpass.getuser())]
        self.c.publish(self.topics.command(name), json.dumps(body), qos=1, properties=props)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CellError(
                    f"no reply to {name} within {self.timeout:.0f} s: is the cell running?"
                )
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if getattr(msg.properties, "CorrelationData", None) == corr:
                reply: dict[str, Any] = json.loads(msg.payload)
                return reply

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _connect(args: argparse.Namespace) -> Remote:
    host, port, cell, prefix = args.host, args.port, args.cell, DEFAULT_PREFIX
    if args.config:
        try:
            parsed = load(args.config)
        except ConfigError as exc:
            raise CellError("\n".join(exc.problems)) from None
        cell = cell or parsed.name
        if parsed.config.mqtt is not None:
            host = host or parsed.config.mqtt.host
            port = port or parsed.config.mqtt.port
            prefix = parsed.config.mqtt.topic_prefix
    if not cell:
        raise CellError("which cell? give -c CONFIG or --cell NAME")
    return Remote(host or "127.0.0.1", port or 1883, Topics(cell, prefix), args.timeout)


def _show_reply(reply: dict[str, Any]) -> int:
    if reply.get("outcome") == "accepted":
        result = reply.get("result")
        print(json.dumps(result, indent=2) if result is not None else "accepted")
        return EXIT_OK
    print(f"rejected: {reply.get('reason')}", file=sys.stderr)
    return EXIT_FAIL


def cmd_simple(args: argparse.Namespace) -> int:
    remote = _connect(args)
    try:
        return _show_reply(remote.command(args.remote_command, args.build(args)))
    finally:
        remote.close()


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        print(f"cellctl submit: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    body = {"job": args.job or path.stem, "steps": [{"process": args.process, "gcode": text}]}
    remote = _connect(args)
    try:
        return _show_reply(remote.command("submit", body))
    finally:
        remote.close()


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    remote = _connect(args)
    base = remote.topics.base
    remote.subscribe(f"{base}/#")
    cell: dict[str, Any] = {}
    devices: dict[str, dict[str, Any]] = {}
    requests: dict[str, str] = {}

    def absorb(msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        parts = msg.topic[len(base) + 1 :].split("/")
        if parts[0] == "status":
            cell.update(body)
        elif parts[0] == "devices" and len(parts) == 3:
            dev = devices.setdefault(parts[1], {})
            if parts[2] == "state":
                dev["state"] = body.get("state")
            elif parts[2] == "samples":
                for s in body.get("samples", []):
                    dev.setdefault("metrics", {})[s["name"]] = s["value"]
            elif parts[2] == "progress":
                dev["progress"] = body.get("fraction")
                dev["step"] = body.get("step")
            elif parts[2] == "requests":
                requests[parts[1]] = f"{body.get('kind')}: {body.get('text')}"

    def table() -> Table:
        t = Table(title=f"cell {remote.topics.cell}: {cell.get('state', 'unknown')}")
        for col in ("device", "state", "metrics", "step", "progress", "operator request"):
            t.add_column(col)
        for dev_id, d in sorted(devices.items()):
            metrics = ", ".join(f"{k}={v}" for k, v in sorted(d.get("metrics", {}).items()))
            frac = d.get("progress")
            bar = "" if frac is None else "█" * int(frac * 20) + "░" * (20 - int(frac * 20))
            t.add_row(
                dev_id,
                d.get("state", "?"),
                metrics,
                d.get("step") or "",
                bar,
                requests.get(dev_id, ""),
            )
        return t

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
        if not args.watch:
            Console().print(table())
            return EXIT_OK if cell.get("state") == "online" else EXIT_FAIL
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

    taken = set(getattr(sub, "choices", {}) or {})

    def free(name: str) -> bool:
        # `cellctl jobs/submit/cancel` of the job CLI (local store) win over these.
        return name not in taken

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="the cell's config (broker address, cell name)")
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.add_argument("--cell", default=None, help="cell name (default: from the config)")
        p.add_argument("--timeout", type=float, default=10.0)

    st = sub.add_parser("status", help="devices, states, jobs and requests of a running cell")
    common(st)
    st.add_argument("--watch", action="store_true", help="a live table until Ctrl-C")
    st.set_defaults(func=cmd_status)

    if free("jobs"):
        jobs = sub.add_parser("jobs", help="the job queue of a running cell")
        common(jobs)
        jobs.set_defaults(func=cmd_simple, remote_command="jobs", build=lambda a: {})

    if free("submit"):
        submit = sub.add_parser("submit", help="submit a G-code file as a one-step job")
        common(submit)
        submit.add_argument("file")
        submit.add_argument("--job", help="job id (default: the file name)")
        submit.add_argument("--process", default="print")
        submit.set_defaults(func=cmd_submit)

    if free("cancel"):
        cancel = sub.add_parser("cancel", help="cancel a job")
        common(cancel)
        cancel.add_argument("job")
        cancel.set_defaults(
            func=cmd_simple, remote_command="cancel", build=lambda a: {"job": a.job}
        )

    ack = sub.add_parser("ack", help="answer an operator request (material loaded, bed cleared …)")
    common(ack)
    ack.add_argument("device")
    ack.add_argument("kind", choices=["load_material", "clear_bed", "change_tool", "acknowledge"])
    ack.set_defaults(
        func=cmd_simple,
        remote_command="answer",
        build=lambda a: {"device": a.device, "kind": a.kind},
    )

    estop = sub.add_parser("estop", help="emergency stop of every device (not a safety function)")
    common(estop)
    estop.add_argument("--reason", default="cellctl estop")
    estop.set_defaults(
        func=cmd_simple, remote_command="estop", build=lambda a: {"reason": a.reason}
    )
