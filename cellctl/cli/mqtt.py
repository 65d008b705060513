"""The CLI's MQTT client: one short-lived connection per `cellctl` invocation.

It speaks to the cell exactly as an MES would (docs/mqtt.md): a command goes to
`cmd/<user>/<name>`, `<user>` being the broker user it logs in as (the broker's
ACL lets it write nowhere else); MQTT 5 commands carry a response topic under
`replies/<user>/` and correlation data; on a broker that only speaks MQTT
3.1.1 (amqtt, the embedded broker of the demo cell) the reply comes on
`replies/<user>/<name>` and is matched by the command's `id`. Every failure is a
CellError with one line fit for an operator: which broker, which cell, why.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cellctl.cli.common import add_config, add_json
from cellctl.config import CellConfig, MqttTls
from cellctl.errors import CellError
from cellctl.telemetry.topics import DEFAULT_PREFIX, Topics

DEFAULT_TIMEOUT_S = 10.0
# How long an MQTT 5 CONNECT waits for an answer where the broker may be the embedded
# amqtt (the config's `embedded = true`) before 3.1.1 is tried: amqtt speaks 3.1.1 only
# and leaves an MQTT 5 CONNECT that carries a user name unanswered instead of refusing
# its version. A broker on the same network answers within milliseconds.
EMBEDDED_ANSWER_S = 1.0


@dataclass(frozen=True)
class Target:
    """Where the cell is reached: broker, topics, and how to talk to the broker."""

    host: str
    port: int
    topics: Topics
    mqtt5: bool = True
    tls: MqttTls | None = None
    # The config's credentials; CELLCTL_MQTT_USERNAME/_PASSWORD override them.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # The config says `embedded = true`: the broker there may be amqtt (3.1.1 only).
    embedded: bool = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def add_remote_options(p: argparse.ArgumentParser) -> None:
    """What every command sent to a running cell takes: the config (optional), the
    broker and cell overrides, the reply timeout and --json."""
    add_config(p, needed=False)
    add_target_options(p)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    add_json(p)


def add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="MQTT broker (default: from the config)")
    p.add_argument("--port", type=int, default=None, help="MQTT port (default: from the config)")
    p.add_argument("--cell", default=None, help="cell name (default: from the config)")


def target_from(args: argparse.Namespace, settings: CellConfig | None) -> Target:
    """The config's [mqtt] section, overridden by --host/--port/--cell."""
    host, port, cell = args.host, args.port, args.cell
    prefix, mqtt5, tls = DEFAULT_PREFIX, True, None
    username: str | None = None
    password: str | None = None
    embedded = False
    if settings is not None:
        cell = cell or settings.cell.name
        mqtt = settings.mqtt
        if mqtt is not None:
            host = host or mqtt.host
            port = port or mqtt.port
            prefix = mqtt.topic_prefix
            # The embedded broker (amqtt) speaks 3.1.1 only; a real one there speaks 5,
            # which `connect` finds out by trying.
            mqtt5 = mqtt.protocol == "5"
            tls = mqtt.tls
            username = mqtt.username
            password = mqtt.password.reveal() if mqtt.password is not None else None
            embedded = mqtt.embedded
    if not cell:
        raise CellError("which cell? give a config or --cell NAME")
    return Target(
        host or "127.0.0.1",
        port or 1883,
        Topics(cell, prefix),
        mqtt5,
        tls,
        username,
        password,
        embedded,
    )


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container)
        return "anonymous"


class _NoAnswer(CellError):
    """The broker accepted the TCP connection but did not answer CONNECT in time."""


class Remote:
    """A connected client. Use `Remote.connect(target, timeout)`, then `close()`."""

    def __init__(self, target: Target, timeout: float, mqtt5: bool) -> None:
        self.target = target
        self.topics = target.topics
        self.timeout = timeout
        self.mqtt5 = mqtt5
        self.client_id = f"cellctl-cli-{uuid.uuid4().hex[:8]}"
        self.inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
        # Acknowledgements arrive on paho's thread, possibly before publish() returns the mid.
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._acks: dict[int, list[ReasonCode]] = {}
        self._subscribed: set[str] = set()
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
        )
        user = os.environ.get("CELLCTL_MQTT_USERNAME")
        if user:
            self.c.username_pw_set(user, os.environ.get("CELLCTL_MQTT_PASSWORD"))
        elif target.username:
            self.c.username_pw_set(target.username, target.password)
        # The name commands are published under. Without a login (a broker that lets
        # anyone in) it is only a claim: the login name of whoever runs the CLI.
        self.user = user or target.username or _login_name()
        if target.tls is not None:
            tls = target.tls
            self.c.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            if not tls.check_hostname:
                self.c.tls_insecure_set(True)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.inbox.put(m)

    # paho's callbacks (its network thread)

    def _on_connect(self, c: paho.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_subscribe(
        self, c: paho.Client, u: Any, mid: int, rcs: list[ReasonCode], p: Any
    ) -> None:
        with self._cond:
            self._acks[mid] = rcs
            self._cond.notify_all()

    def _on_publish(self, c: paho.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self._acks[mid] = [rc]
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], until: float) -> bool:
        with self._cond:
            return self._cond.wait_for(ready, timeout=max(0.0, until - time.monotonic()))

    # connection

    @classmethod
    def connect(cls, target: Target, timeout: float = DEFAULT_TIMEOUT_S) -> Remote:
        remote = cls(target, timeout, target.mqtt5)
        first = min(timeout, EMBEDDED_ANSWER_S) if target.mqtt5 and target.embedded else timeout
        try:
            rc = remote._open(first)
        except _NoAnswer:
            if first >= timeout:
                raise
            remote = cls(target, timeout, mqtt5=False)
            rc = remote._open(timeout)
        if rc is not None and target.mqtt5 and rc == "Unsupported protocol version":
            remote.close()
            remote = cls(target, timeout, mqtt5=False)
            rc = remote._open(timeout)
        if rc is not None:
            remote.close()
            raise CellError(f"the MQTT broker at {target.where} refused the connection: {rc}")
        return remote

    def _open(self, within_s: float) -> ReasonCode | None:
        """None once connected, else the broker's refusal; _NoAnswer after `within_s`."""
        where = self.target.where
        try:
            self.c.connect(self.target.host, self.target.port, keepalive=30)
        except OSError as exc:
            raise CellError(
                f"cannot reach the MQTT broker at {where}: {exc.strerror or exc}"
            ) from None
        self.c.loop_start()
        if not self._wait(lambda: self._connack is not None, time.monotonic() + within_s):
            self.close()
            raise _NoAnswer(f"the MQTT broker at {where} did not answer within {within_s:g} s")
        assert self._connack is not None
        return self._connack if self._connack.is_failure else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    # subscriptions and commands

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the broker's SUBACK, so that no reply can come first."""
        if topic in self._subscribed:
            return
        result, mid = self.c.subscribe(topic, 1)
        if mid is None:
            raise CellError(f"lost the MQTT broker at {self.target.where}: {result}")
        where = self.target.where
        if not self._wait(lambda: mid in self._acks, time.monotonic() + self.timeout):
            raise CellError(f"the MQTT broker at {where} did not confirm a subscription")
        if any(rc.is_failure for rc in self._acks.pop(mid)):
            raise CellError(f"the MQTT broker at {where} refused to subscribe {topic}")
        self._subscribed.add(topic)

    def command(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one command; its reply (accepted or rejected) as a dict."""
        corr = uuid.uuid4().hex
        props: Properties | None = None
        if self.mqtt5:
            reply_topic = f"{self.topics.replies(self.user)}/{self.client_id}"
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_topic
            props.CorrelationData = corr.encode()
            props.UserProperty = [("client_id", self.client_id), ("os_user", _login_name())]
        else:
            reply_topic = self.topics.reply(self.user, name)
            body = {**body, "id": corr}
        self.subscribe(reply_topic)
        topic = self.topics.command(self.user, name)
        info = self.c.publish(topic, json.dumps(body), qos=1, properties=props)
        until = time.monotonic() + self.timeout
        if self._wait(lambda: info.mid in self._acks, until):
            refusal = self._acks.pop(info.mid)[0]
            if refusal.is_failure:  # MQTT 5: an ACL that denies the command topic says so here
                raise CellError(
                    f"the MQTT broker at {self.target.where} refused command {name}: {refusal}"
                )
        while True:
            left = until - time.monotonic()
            if left <= 0:
                refused = (
                    ""
                    if self.mqtt5
                    else (
                        ", or the broker dropped it (MQTT 3.1.1 does not say when an ACL "
                        f"refuses a publish: may user {self.user!r} write {topic}?)"
                    )
                )
                raise CellError(
                    f"no reply to {name} from cell {self.topics.cell!r} within "
                    f"{self.timeout:g} s (broker {self.target.where}): "
                    f"the daemon may not be running{refused}"
                )
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if msg.topic != reply_topic:
                continue
            try:
                reply = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(reply, dict):
                continue
            if self.mqtt5:
                mine = getattr(msg.properties, "CorrelationData", None) == corr.encode()
            else:
                mine = reply.get("id") == corr
            if mine:
                return reply
