"""The embedded broker (`embedded = true`): amqtt, started only when nothing listens.

A demo or a standalone cell without a plant broker still needs one. When
something already accepts connections on the configured address (a system
Mosquitto, say), the daemon uses it and starts nothing. amqtt speaks MQTT
3.1.1 only, so a link to the embedded broker uses 3.1.1 whatever `protocol`
says; production cells point at a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from cellctl.errors import LinkError
from cellctl.telemetry.link import LinkSettings

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


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[bool]:
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
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    try:
        await broker.start()
    except Exception as exc:
        raise LinkError(f"cannot start the embedded broker on {host}:{port}: {exc}") from exc
    log.info("embedded MQTT broker started (amqtt, MQTT 3.1.1)", host=host, port=port)
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
