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
import logging
from collections.abc import AsyncIterator
from typing import Any

import structlog

from cellctl.errors import LinkError

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
