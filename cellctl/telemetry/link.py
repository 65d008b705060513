"""One MQTT connection, driven by paho-mqtt on the asyncio event loop itself.

paho's network loop runs on the event loop through its socket callbacks
(`add_reader`/`add_writer` call `loop_read`/`loop_write`; a 1 s timer calls
`loop_misc` for keepalive), not in paho's `loop_start` thread. The benchmark
in benchmarks/telemetry.py chose this (docs/architecture.md has the figures):
every callback then runs on the loop without thread hand-offs or locks, and
a burst of publishes is written by one `loop_write` per writable socket.

Only the blocking part of a connection (DNS, TCP connect, TLS handshake) runs
in a worker thread, bounded by `connect_timeout_s`, so a slow or dead broker
never stalls the loop; the rest of the daemon never waits on MQTT.

A fresh paho client is made for every connection attempt: QoS 1 redelivery is
the spool's job (cellctl.telemetry.spool), which resends whatever the broker
did not acknowledge, in order, after any reconnect or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cellctl.backoff import Backoff
from cellctl.config import MqttSection
from cellctl.errors import LinkError
from cellctl.telemetry.encoding import Outgoing
from cellctl.telemetry.pahoclient import BufferedClient

log = structlog.get_logger("cellctl.mqtt")


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class LinkSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    mqtt5: bool = True
    client_id: str = ""
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    reconnect_jitter: float = 0.3
    max_inflight: int = 1000

    @classmethod
    def from_config(cls, cfg: MqttSection, client_id: str) -> LinkSettings:
        tls = cfg.tls
        return cls(
            host=cfg.host,
            port=cfg.port,
            mqtt5=cfg.protocol == "5",
            client_id=cfg.client_id or client_id,
            keepalive_s=cfg.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            username=cfg.username,
            password=cfg.password.reveal() if cfg.password is not None else None,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
            check_hostname=tls.check_hostname if tls else True,
            reconnect_initial_s=cfg.reconnect_initial_s,
            reconnect_max_s=cfg.reconnect_max_s,
            reconnect_jitter=cfg.reconnect_jitter,
            max_inflight=cfg.max_inflight,
        )

    @property
    def address(self) -> str:
        return f"{'mqtts' if self.ca_file else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message received on a subscription, with what MQTT 5 says about it."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    received: float = 0.0  # loop.time() when paho handed it over
    # Which of the daemon's connections delivered it (cellctl.telemetry.urgent).
    channel: str = "main"


@dataclass
class LinkStats:
    connects: int = 0
    failures: int = 0
    published: int = 0


MessageHandler = Callable[[Incoming], None]
AckHandler = Callable[[int, bool], None]


@dataclass
class _Session:
    """Per-connection state: the paho client and what the loop registered for it."""

    client: BufferedClient
    connack: asyncio.Future[ReasonCode]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    sock: Any = None
    sub_mid: int | None = None


class MqttLink:
    """Keeps one connection up: connect, subscribe, reconnect with jittered backoff."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        will: Outgoing | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        on_ack: AckHandler | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.will = will
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_ack = on_ack
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        # Called once the broker acknowledged this connection's subscriptions (SUBACK):
        # from then on it delivers every message published to them.
        self.on_subscribed = on_subscribed
        self._rng = rng or random.Random()
        self.state = LinkState.DISCONNECTED
        self.connected = asyncio.Event()
        self.stats = LinkStats()
        self.last_error = ""
        self._session: _Session | None = None
        self._reading_paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._backoff = Backoff(
            settings.reconnect_initial_s,
            settings.reconnect_max_s,
            jitter=settings.reconnect_jitter,
            floor_s=0.05,
            rng=self._rng,
        )

    # --- public -----------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        # `connected` is cleared whenever the state leaves CONNECTED: waiting on it never spins.
        return self.connected.is_set()

    def publish(self, out: Outgoing, properties: Properties | None = None) -> int | None:
        """Queue a message on the current connection; returns its mid, None when offline."""
        session = self._session
        if session is None or self.state != LinkState.CONNECTED:
            return None
        if out.qos == 0 and properties is None:
            if session.client.publish_qos0(out.topic, out.payload, out.retain):
                self.stats.published += 1
                return 0  # QoS 0 has no message id
        info = session.client.publish(
            out.topic, out.payload, qos=out.qos, retain=out.retain, properties=properties
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        self.stats.published += 1
        return int(info.mid)

    def pause_reading(self, paused: bool) -> None:
        """Stop or restart reading this connection's socket (what arrives meanwhile waits
        in the socket and the broker). Writing and keepalive go on."""
        self._reading_paused = paused
        session, loop = self._session, self._loop
        if session is None or session.sock is None or loop is None or session.lost.is_set():
            return
        if paused:
            loop.remove_reader(session.sock)
        else:
            loop.add_reader(session.sock, self._readable, session)
            if session.client.read_pending():  # TLS bytes decrypted already: no readiness
                loop.call_soon(self._readable, session)

    def reply_properties(self, correlation: bytes | None) -> Properties | None:
        if not self.settings.mqtt5 or correlation is None:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
        return props

    async def run(self) -> None:
        """Connect and stay connected until cancelled. Never raises but CancelledError."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            while True:
                try:
                    await self._one_connection()
                except LinkError as exc:
                    self._failed(str(exc))
                await asyncio.sleep(self._backoff.next())
        finally:
            self._teardown()
            self.state = LinkState.CLOSED

    async def wait_connected(self, within_s: float) -> None:
        async with asyncio.timeout(within_s):
            await self.connected.wait()

    async def close(self, final: Outgoing | None = None, within_s: float = 2.0) -> None:
        """Publish `final` (the `offline` status) and disconnect cleanly, within `timeout`."""
        session = self._session
        if session is None or self.state != LinkState.CONNECTED:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                if final is not None:
                    done = asyncio.get_running_loop().create_future()
                    previous = self.on_ack

                    def on_final(mid: int, ok: bool) -> None:
                        if mid == final_mid and not done.done():
                            done.set_result(ok)
                        elif previous is not None:
                            previous(mid, ok)

                    self.on_ack = on_final
                    final_mid = self.publish(final)
                    if final_mid is not None:
                        await done
                    self.on_ack = previous
                self.state = LinkState.CLOSED
                self.connected.clear()
                session.client.disconnect()
                await session.lost.wait()
        self._teardown()

    # --- connection -------------------------------------------------------

    def _failed(self, message: str) -> None:
        self.stats.failures += 1
        if message != self.last_error:
            log.error("MQTT connection failed", broker=self.settings.address, error=message)
        else:
            log.debug("MQTT connection still failing", error=message)
        self.last_error = message

    def _make_client(self) -> BufferedClient:
        s = self.settings
        protocol = MQTTProtocolVersion.MQTTv5 if s.mqtt5 else MQTTProtocolVersion.MQTTv311
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=protocol,
            clean_session=None if s.mqtt5 else True,
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(s.ca_file))
            if s.cert_file is not None:
                ctx.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
            ctx.check_hostname = s.check_hostname
            client.tls_set_context(ctx)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        return client

    async def _one_connection(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            client = self._make_client()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise LinkError(f"cannot set up the MQTT client: {exc}") from exc
        session = _Session(client, loop.create_future())
        self._session = session
        self._wire(session)
        self.state = LinkState.CONNECTING
        try:
            try:
                await asyncio.to_thread(self._open, client)
            except (OSError, ssl.SSLError, ValueError, paho.WebsocketConnectionError) as exc:
                raise LinkError(_describe_oserror(exc, self.settings)) from exc
            try:
                async with asyncio.timeout(self.settings.connect_timeout_s):
                    rc = await session.connack
            except TimeoutError:
                raise LinkError("the broker did not answer CONNECT in time") from None
            if rc.is_failure:
                hint = ""
                if rc.value in (0x86, 0x87, 4, 5):  # bad user/password, not authorized
                    hint = f" (check the username and password for {self.settings.address})"
                raise LinkError(f"the broker refused the connection: {rc.getName()}{hint}")
            if self.subscriptions:  # one SUBSCRIBE, one SUBACK (on_subscribed)
                _, session.sub_mid = client.subscribe(list(self.subscriptions))
            self.state = LinkState.CONNECTED
            self._backoff.reset()
            self.stats.connects += 1
            if self.last_error:
                log.info("MQTT connected after failures", broker=self.settings.address)
            else:
                log.info("MQTT connected", broker=self.settings.address)
            self.last_error = ""
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected()
            await self._keepalive(session)
            if self.state != LinkState.CLOSED:
                self._failed("connection lost")
        finally:
            was_connected = self.connected.is_set()
            self.connected.clear()
            if self.state != LinkState.CLOSED:
                self.state = LinkState.DISCONNECTED
            self._teardown()
            if was_connected and self.on_disconnected is not None:
                self.on_disconnected()

    def _open(self, client: BufferedClient) -> None:
        """Worker thread: DNS, TCP, TLS handshake, CONNECT queued (paho's connect)."""
        s = self.settings
        client.connect(s.host, s.port, keepalive=s.keepalive_s)

    async def _keepalive(self, session: _Session) -> None:
        while not session.lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await session.lost.wait()
            if not session.lost.is_set():
                session.client.loop_misc()

    def _teardown(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if session.sock is not None:
            self._unregister(session, session.sock)
        with contextlib.suppress(Exception):
            session.client._sock_close()  # paho has no public "drop the socket now"
        session.lost.set()
        if not session.connack.done():
            session.connack.cancel()

    # --- paho's callbacks (all on the event loop, see _in_loop) ------------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    def _wire(self, session: _Session) -> None:
        client = session.client

        def on_socket_open(_c: paho.Client, _u: Any, sock: Any) -> None:
            self._in_loop(self._register, session, sock)

        def on_socket_close(_c: paho.Client, _u: Any, sock: Any) -> None:
            self._in_loop(self._closed, session, sock)

        def on_register_write(_c: paho.Client, _u: Any, sock: Any) -> None:
            self._in_loop(self._want_write, session, sock, True)

        def on_unregister_write(_c: paho.Client, _u: Any, sock: Any) -> None:
            self._in_loop(self._want_write, session, sock, False)

        def on_connect(
            _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
        ) -> None:
            if not session.connack.done():
                session.connack.set_result(rc)

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            handler = self.on_message
            if handler is None:
                return
            props = getattr(msg, "properties", None)
            response = getattr(props, "ResponseTopic", None) if props is not None else None
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            users = getattr(props, "UserProperty", None) if props is not None else None
            handler(
                Incoming(
                    topic=msg.topic,
                    payload=bytes(msg.payload),
                    response_topic=response,
                    correlation=bytes(corr) if corr is not None else None,
                    user_properties=tuple((str(k), str(v)) for k, v in users or ()),
                    received=asyncio.get_running_loop().time(),
                )
            )

        def on_subscribe(_c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
            self._in_loop(self._subscribed, session, mid)

        def on_acked(mid: int, ok: bool) -> None:
            if self.on_ack is not None:
                self.on_ack(mid, ok)

        client.on_socket_open = on_socket_open
        client.on_socket_close = on_socket_close
        client.on_socket_register_write = on_register_write
        client.on_socket_unregister_write = on_unregister_write
        client.on_connect = on_connect
        client.on_message = on_message
        client.on_acked = on_acked
        client.on_subscribe = on_subscribe

    def _subscribed(self, session: _Session, mid: int) -> None:
        if self._session is session and mid == session.sub_mid and self.on_subscribed:
            self.on_subscribed()

    def _register(self, session: _Session, sock: Any) -> None:
        if self._session is not session or session.lost.is_set():
            return
        session.sock = sock
        assert self._loop is not None
        if not self._reading_paused:
            self._loop.add_reader(sock, self._readable, session)
        if session.client.want_write():
            self._loop.add_writer(sock, self._writable, session)

    def _readable(self, session: _Session) -> None:
        session.client.loop_read()  # a bounded number of packets: the loop gets a turn
        if session.client.read_pending() and self._loop is not None and not self._reading_paused:
            self._loop.call_soon(self._readable, session)

    def _writable(self, session: _Session) -> None:
        session.client.loop_write()

    def _want_write(self, session: _Session, sock: Any, on: bool) -> None:
        if session.sock is not sock or self._loop is None:
            return
        if on:
            self._loop.add_writer(sock, self._writable, session)
        else:
            self._loop.remove_writer(sock)

    def _closed(self, session: _Session, sock: Any) -> None:
        self._unregister(session, sock)
        session.lost.set()
        if not session.connack.done():
            session.connack.set_exception(
                LinkError("the broker closed the connection before CONNACK")
            )

    def _unregister(self, session: _Session, sock: Any) -> None:
        if self._loop is not None and session.sock is sock and sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            session.sock = None


def _describe_oserror(exc: BaseException, s: LinkSettings) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {s.address} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {s.address} (connection refused)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {s.host!r}: {exc.strerror}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"connecting to {s.address} timed out"
    if isinstance(exc, OSError):
        return f"cannot connect to {s.address}: {exc.strerror or exc}"
    return f"cannot connect to {s.address}: {exc}"
