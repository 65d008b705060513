"""The embedded broker (`embedded = true`): amqtt, started only when nothing listens.

A demo or a standalone cell without a plant broker still needs one. When
something already accepts connections on the configured address (a system
Mosquitto, say), the daemon uses it and starts nothing. amqtt speaks MQTT
3.1.1 only, so a link to the embedded broker uses 3.1.1 whatever `protocol`
says; production cells point at a real broker.

With `[access] allow_anonymous = true` (the demo) it lets anyone in. Otherwise
it takes users from `embedded_password_file` (amqtt's `user:<argon2 hash>`
lines) and an ACL generated from `[access]`: each user may publish exactly
`cmd/<user>/<command>` for the commands its roles allow, the cell's own user
everything under the cell, nobody else anything (so nobody forges a reply).
tests/mqtt/test_embedded.py checks that the pinned amqtt enforces it.

Also here: the start check's anonymous CONNECT (`probe_anonymous`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from cellctl.access import Access
from cellctl.errors import ConfigError, LinkError
from cellctl.telemetry.link import LinkSettings
from cellctl.telemetry.topics import Topics

log = structlog.get_logger("cellctl.mqtt.broker")


async def listening(host: str, port: int, within_s: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        async with asyncio.timeout(within_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass(frozen=True)
class BrokerAccess:
    """What the embedded broker needs to know to enforce [access]."""

    topics: Topics
    access: Access
    cell_user: str | None = None
    password_file: Path | None = None


def _users_in(password_file: Path) -> list[str]:
    try:
        lines = password_file.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(
            [f"{password_file}: cannot read the embedded broker's password file: {exc.strerror}"]
        ) from None
    return [ln.split(":", 1)[0] for ln in lines if ":" in ln and not ln.startswith("#")]


def amqtt_config(host: str, port: int, rules: BrokerAccess | None) -> dict[str, Any]:
    """amqtt's configuration: anonymous for the demo, else password file and ACL."""
    listeners = {"default": {"type": "tcp", "bind": f"{host}:{port}"}}
    if rules is None or rules.access.allow_anonymous:
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
        }
        return {"listeners": listeners, "plugins": plugins}
    from amqtt.plugins.topic_checking import TopicAccessControlListPlugin

    if "publish_acl" not in {f.name for f in fields(TopicAccessControlListPlugin.Config)}:
        raise ConfigError(
            [
                "mqtt.embedded: the installed amqtt cannot enforce publish ACLs, so the "
                "embedded broker cannot keep users apart: set [access] allow_anonymous = true "
                "or use a broker such as Mosquitto (docs/mqtt.md)"
            ]
        )
    if rules.password_file is None or not rules.cell_user:
        raise ConfigError(
            [
                "mqtt.embedded: without allow_anonymous the embedded broker needs "
                "[mqtt] username and embedded_password_file"
            ]
        )
    t = rules.topics
    users = {*_users_in(rules.password_file), *rules.access.users}
    publish = {
        u: [t.command(u, c) for c in sorted(rules.access.commands_of(u))]
        for u in sorted(users)
        if u != rules.cell_user
    }
    publish[rules.cell_user] = [t.everything]
    subscribe = {u: [t.everything] for u in sorted(users | {rules.cell_user})}
    plugins = {
        "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(rules.password_file)},
        "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
            "publish_acl": publish,
            "acl": subscribe,
        },
    }
    return {"listeners": listeners, "plugins": plugins}


@contextlib.asynccontextmanager
async def embedded_broker(
    host: str, port: int, rules: BrokerAccess | None = None
) -> AsyncIterator[bool]:
    """Yields True when this process started a broker, False when one was already there."""
    if await listening(host, port):
        log.info("a broker already listens; using it", host=host, port=port)
        yield False
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise LinkError(
            "embedded = true needs the amqtt package: pip install 'cellctl[demo]'"
        ) from None
    # amqtt logs every packet at INFO; keep it to warnings like other libraries.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = amqtt_config(host, port, rules)
    try:
        with warnings.catch_warnings():
            # amqtt 0.12 calls its subscribe ACL option `acl` and warns that it is deprecated
            # while its config class has no other name for it.
            warnings.simplefilter("ignore", DeprecationWarning)
            broker = Broker(config)
        await broker.start()
    except Exception as exc:
        raise LinkError(f"cannot start the embedded broker on {host}:{port}: {exc}") from exc
    secured = "FileAuthPlugin" in str(config["plugins"])
    log.info(
        "embedded MQTT broker started (amqtt, MQTT 3.1.1)",
        host=host,
        port=port,
        access="password file and ACL from [access]" if secured else "anonymous",
    )
    try:
        yield True
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3.0):
                await broker.shutdown()


class Anonymous(enum.Enum):
    """What the broker did with a CONNECT that had no credentials."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    UNKNOWN = "unknown"  # unreachable, or no answer in time: ask again later


def _probe(s: LinkSettings, mqtt5: bool) -> tuple[Anonymous, str]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"cellctl-probe-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
    )
    if s.ca_file is not None:
        # The broker's CA, but no client certificate: a broker that maps certificates
        # to users must not count the probe as someone.
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        ctx.check_hostname = s.check_hostname
        client.tls_set_context(ctx)
    answer: list[ReasonCode] = []
    client.on_connect = lambda c, u, f, rc, p: answer.append(rc)
    try:
        client.connect(s.host, s.port, keepalive=10)
    except (OSError, ssl.SSLError, ValueError) as exc:
        if isinstance(exc, ssl.SSLError):  # e.g. a client certificate is required
            return Anonymous.REFUSED, f"TLS refused a client without a certificate: {exc}"
        return Anonymous.UNKNOWN, str(exc)
    deadline = time.monotonic() + s.connect_timeout_s
    try:
        while not answer and time.monotonic() < deadline:
            rc = client.loop(timeout=0.1)
            if rc != paho.MQTT_ERR_SUCCESS and not answer:
                # Closed before CONNACK (TLS 1.3 reports a missing certificate this way).
                return Anonymous.REFUSED, f"closed the connection: {rc.name}"
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    if not answer:
        return Anonymous.UNKNOWN, "no CONNACK in time"
    if answer[0].is_failure:
        return Anonymous.REFUSED, str(answer[0])
    return Anonymous.ACCEPTED, "CONNACK success"


async def probe_anonymous(s: LinkSettings) -> tuple[Anonymous, str]:
    """One CONNECT without user name, password or client certificate, as an attacker would."""
    result, why = await asyncio.to_thread(_probe, s, s.mqtt5)
    if result is Anonymous.REFUSED and s.mqtt5 and "protocol version" in why.lower():
        result, why = await asyncio.to_thread(_probe, s, False)  # a 3.1.1-only broker
    return result, why
