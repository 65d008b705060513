"""Robots and PLCs over OPC UA: a tag-map driver with program handshakes.

The device is described in config by its tags (node ids, namespaces named by
URI), which tags mean what (state, program handshake, heartbeat, commands)
and how its state values map onto PackML. Status tags arrive through one
subscription, polled tags through batched reads; both become metrics whose
samples carry the server's source timestamp and quality.

A lost session is re-created within `reconnect_grace_s`, every monitored item
restored; meanwhile every metric is published once with quality BAD and the
state is UNAVAILABLE. Past the grace, `serve()` raises LinkError and the
supervisor takes over. A step whose link drops re-reads the robot when the
session is back and never starts a program a second time.

PackML mapping (the `state.values` table of the config; the simulator's states):

    robot state       PackML      why
    IDLE              Idle        ready for a program
    RUNNING           Execute     a program runs
    PAUSED            Held        paused by host, operator or an open door
    STOPPED           Stopped     stopped by host or by the heartbeat watchdog
    ESTOP             Aborted     emergency stop: `reset` clears it
    FAULT             Aborted     a program failed; the error code says why
    (link down)       Unavailable nothing is known
    (unmapped value)  Stopped     with the raw value in the status detail
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cellctl_drivers.opcua import certs
from cellctl_drivers.opcua.options import ActionSpec, OpcUaOptions, ProgramSpec, TagSpec
from cellctl_drivers.opcua.quiet import quiet_asyncua
from cellctl_drivers.opcua.ratelimit import RateLimiter
from cryptography import x509

from cellctl.driver import DriverContext, ProgressSink
from cellctl.errors import CellError, LinkError, NotSupported, WrongDevice
from cellctl.model import (
    Alarm,
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricType,
    MetricValue,
    Progress,
    Quality,
    Sample,
    Samples,
    Setup,
    StateChanged,
    Step,
    StepOutcome,
    StepResult,
)


class AccessDenied(WrongDevice):
    """The server refused our user or certificate, or its certificate is not trusted.

    A WrongDevice: retrying soon cannot help, so the supervisor backs off to its cap."""


_AUTH_CODES = {
    StatusCodes.BadUserAccessDenied: "wrong user name or password",
    StatusCodes.BadIdentityTokenRejected: "the server does not accept this kind of login",
    StatusCodes.BadIdentityTokenInvalid: "wrong user name or password",
    StatusCodes.BadCertificateUntrusted: "the server does not trust our client certificate",
    StatusCodes.BadCertificateInvalid: "the server rejected our client certificate",
    StatusCodes.BadSecurityChecksFailed: "security checks failed (certificate not trusted?)",
    StatusCodes.BadSecurityPolicyRejected: "the server does not offer this security policy",
}

_VARIANT_FOR: dict[MetricType, ua.VariantType] = {
    MetricType.BOOL: ua.VariantType.Boolean,
    MetricType.INT: ua.VariantType.Int32,
    MetricType.FLOAT: ua.VariantType.Double,
    MetricType.STRING: ua.VariantType.String,
}
_DEFAULT: dict[MetricType, MetricValue] = {
    MetricType.BOOL: False,
    MetricType.INT: 0,
    MetricType.FLOAT: 0.0,
    MetricType.STRING: "",
}
_LINK_EXC = (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)
_IO_EXC = (*_LINK_EXC, UaError)
_CONSUME_CHUNK = 200  # notifications handled between two yields to the event loop


class _SessionLost(Exception):
    """Internal: the current session died; serve() re-creates it."""


class _UntrustedServer(Exception):
    pass


def _status_name(code: int) -> str:
    try:
        return ua.StatusCode(ua.UInt32(code)).name
    except Exception:
        return f"0x{code:08X}"


def _translate(exc: BaseException, what: str) -> CellError:
    """asyncua/OS exceptions → the cellctl tree, one readable line each."""
    if isinstance(exc, CellError):
        return exc
    if isinstance(exc, _UntrustedServer):
        return AccessDenied(f"{what}: {exc}")
    code: int | None = None
    if isinstance(exc, UaStatusCodeError):
        code = exc.code
    elif isinstance(exc, ServiceError):
        code = exc.code
    if code is not None:
        if code in _AUTH_CODES:
            return AccessDenied(f"{what}: {_AUTH_CODES[code]} ({_status_name(code)})")
        return LinkError(f"{what}: {_status_name(code)}")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return LinkError(f"{what}: no answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return LinkError(f"{what}: connection refused")
    if isinstance(exc, OSError | ConnectionError):
        return LinkError(f"{what}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
    return LinkError(f"{what}: {type(exc).__name__}: {exc}")


def _quality(dv: ua.DataValue) -> Quality:
    sc = dv.StatusCode
    if sc is None or sc.is_good():
        return Quality.GOOD
    if sc.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def _ts(dv: ua.DataValue) -> float:
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    if stamp is None:
        return time.time()
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def _convert(kind: MetricType, value: Any) -> MetricValue:
    if kind == MetricType.BOOL:
        return bool(value)
    if kind == MetricType.INT:
        return int(value)
    if kind == MetricType.FLOAT:
        return float(value)
    return str(value)


def _variant(value: MetricValue, vtype: ua.VariantType | None = None) -> ua.Variant:
    if vtype is None:
        if isinstance(value, bool):
            vtype = ua.VariantType.Boolean
        elif isinstance(value, int):
            vtype = ua.VariantType.Int32
        elif isinstance(value, float):
            vtype = ua.VariantType.Double
        else:
            vtype = ua.VariantType.String
    return ua.Variant(value, vtype)


class _Session:
    """One asyncua client session with everything resolved against it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.nodes: dict[str, Node] = {}
        self.by_nodeid: dict[ua.NodeId, str] = {}
        self.vtypes: dict[str, ua.VariantType] = {}
        self.sub: Any = None
        self.lost = asyncio.Event()
        self.lost_reason = ""


class OpcUaDriver:
    """Robots and PLCs over OPC UA: tag map, subscriptions, program handshake."""

    name: ClassVar[str] = "opcua"
    Options: ClassVar[type[OpcUaOptions]] = OpcUaOptions
    simulator: ClassVar[str] = "opcua-robot"

    def __init__(self, ctx: DriverContext, options: OpcUaOptions) -> None:
        self.ctx = ctx
        self.o = options
        self.log = ctx.logger()
        # Checked at connect: a constructor that raises would escape the supervisor.
        self.url = ctx.endpoint or options.endpoint or ""
        self._session: _Session | None = None
        self._state = DeviceState.UNAVAILABLE
        self._reason = ""
        self._detail = ""
        self._values: dict[str, Sample] = {}
        self._changed = asyncio.Condition()
        self._connected = asyncio.Event()
        self._dead = asyncio.Event()
        self._generation = 0
        self._limiter = RateLimiter(
            options.max_writes_per_s, burst=max(4, int(options.max_writes_per_s / 2))
        )
        self._step_lock = asyncio.Lock()
        self._stop_requested = False
        self._heartbeat = 0
        self._trusted: set[str] = set()
        self._warned_untrusted = False
        self._alarm = ""
        self.reconnects = 0
        self.metric_tags = {n: t for n, t in options.tags.items() if t.read != "none"}
        self.poll_tags = [n for n, t in options.tags.items() if t.read == "poll"]
        self.sub_tags = [n for n, t in options.tags.items() if t.read == "subscribe"]

    # --- contract: identity -------------------------------------------------

    def metrics(self) -> Sequence[MetricSpec]:
        return [
            MetricSpec(n, t.type, t.unit, t.description, t.writable)
            for n, t in self.metric_tags.items()
        ]

    def status(self) -> DeviceStatus:
        return DeviceStatus(state=self._state, detail=self._detail)

    def value(self, tag: str) -> MetricValue | None:
        s = self._values.get(tag)
        return None if s is None else s.value

    # --- connect / disconnect --------------------------------------------------

    async def __aenter__(self) -> Self:
        quiet_asyncua()
        self._session = await self._open()
        self._connected.set()
        self._derive_state()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        self._connected.clear()
        self._dead.set()
        if session is not None:
            await self._close(session)
        self._set_state(DeviceState.UNAVAILABLE, "disconnected")

    async def _close(self, session: _Session) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await session.client.disconnect()
        # A client whose server vanished may not get that far: stop its tasks anyway.
        with contextlib.suppress(Exception):
            session.client.disconnect_socket()

    def _client(self) -> Client:
        o = self.o
        client = Client(self.url, timeout=o.timeout_s, watchdog_intervall=o.keepalive_s)
        client.name = f"cellctl {self.ctx.device_id}"
        client.description = client.name
        client.application_uri = f"urn:cellctl:{self.ctx.device_id}"
        if o.certificate is not None:
            uri = certs.application_uri(certs.load_certificate(o.certificate))
            if uri:
                client.application_uri = uri  # must match the certificate's
        if o.username is not None and o.password is not None:
            client.set_user(o.username)
            client.set_password(o.password.reveal())
        client.certificate_validator = self._check_server_cert
        return client

    async def _check_server_cert(self, cert: Any, app: ua.ApplicationDescription) -> None:
        if not self._trusted:
            if not self._warned_untrusted:
                self._warned_untrusted = True
                self.log.warning(
                    "server certificate accepted without a trust list",
                    fingerprint=certs.fingerprint(cert),
                )
            return
        if certs.fingerprint(cert) not in self._trusted:
            raise _UntrustedServer(
                "the server's certificate is not in trusted_server_certs "
                f"(sha256 {certs.fingerprint(cert)[:16]}…)"
            )

    def _check_files(self) -> None:
        """Local set-up mistakes, each one clear error, before any network traffic."""
        o = self.o
        if not self.url:
            raise WrongDevice('no endpoint: set endpoint = "opc.tcp://host:port/…"')
        for key in ("certificate", "private_key"):
            path = getattr(o, key)
            if path is not None and not path.is_file():
                raise AccessDenied(f"{key} {str(path)!r} is not a readable file")
        try:
            self._trusted = certs.trusted_fingerprints(list(o.trusted_server_certs))
        except (OSError, ValueError) as exc:
            raise AccessDenied(f"trusted_server_certs: cannot read a certificate: {exc}") from None

    async def _open(self) -> _Session:
        o = self.o
        self._check_files()
        try:
            client = self._client()
        except (OSError, ValueError) as exc:
            raise AccessDenied(f"certificate {str(o.certificate)!r}: {exc}") from None
        session = _Session(client)
        what = f"OPC UA {self.url}"
        try:
            async with asyncio.timeout(o.timeout_s * 3):
                if o.security_policy == "Basic256Sha256":
                    assert o.certificate is not None and o.private_key is not None
                    mode = getattr(ua.MessageSecurityMode, o.security_mode)
                    await client.set_security(
                        SecurityPolicyBasic256Sha256,
                        certificate=str(o.certificate),
                        private_key=str(o.private_key),
                        mode=mode,
                    )
                    # set_security fetched the endpoints: the server certificate is
                    # known now, so check it before any session is created.
                    peer = client.security_policy.peer_certificate
                    if peer:
                        await self._check_server_cert(x509.load_der_x509_certificate(peer), None)  # type: ignore[arg-type]

                async def lost(exc: Exception) -> None:
                    session.lost_reason = str(exc) or type(exc).__name__
                    session.lost.set()

                client.connection_lost_callback = lost
                await client.connect()
        except BaseException as exc:
            await self._close(session)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _translate(exc, what) from None
        try:
            async with asyncio.timeout(o.timeout_s * 3):
                await self._resolve(session)
                await self._read_all(session)
                await self._subscribe(session)
        except BaseException as exc:
            await self._close(session)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _translate(exc, what) from None
        self._generation += 1
        return session

    async def _resolve(self, session: _Session) -> None:
        """Namespace URIs → this server's indexes; check every tag's node exists."""
        o = self.o
        ns_array: list[str] = await session.client.get_namespace_array()

        def index(uri: str, where: str) -> int:
            if uri not in ns_array:
                raise WrongDevice(
                    f"{where}: namespace {uri!r} is not on this server (it has {ns_array[1:]})"
                )
            return ns_array.index(uri)

        default_ns = index(o.namespace_uri, "namespace_uri") if o.namespace_uri else None

        def nodeid(text: str, where: str) -> ua.NodeId:
            if text.startswith("nsu="):
                uri, _, rest = text[4:].partition(";")
                return ua.NodeId.from_string(f"ns={index(uri, where)};{rest}")
            assert default_ns is not None
            return ua.NodeId.from_string(f"ns={default_ns};{text}")

        self._nodeid = nodeid
        for name, tag in o.tags.items():
            nid = nodeid(tag.node, f"tags.{name}")
            session.nodes[name] = session.client.get_node(nid)
            session.by_nodeid[nid] = name
        names = list(session.nodes)
        for chunk in _chunks(names, o.max_nodes_per_read):
            results = await session.client.read_attributes(
                [session.nodes[n] for n in chunk], AttributeIds.DataType
            )
            for name, dv in zip(chunk, results, strict=True):
                if dv.StatusCode is not None and not dv.StatusCode.is_good():
                    raise WrongDevice(
                        f"tags.{name}: node {o.tags[name].node!r} is not on this server "
                        f"({_status_name(dv.StatusCode.value)})"
                    )
                dt = dv.Value.Value if dv.Value is not None else None
                if isinstance(dt, ua.NodeId) and dt.NamespaceIndex == 0:
                    with contextlib.suppress(ValueError):
                        session.vtypes[name] = ua.VariantType(int(dt.Identifier))

    _nodeid: Callable[[str, str], ua.NodeId]

    async def _read_all(self, session: _Session) -> None:
        """Fill the value cache so that status() is right as soon as we are connected."""
        fresh = await self._read(session, list(self.metric_tags))
        self._store(fresh)
        if fresh:
            self.ctx.emit(Samples(self.ctx.device_id, tuple(fresh)))

    async def _subscribe(self, session: _Session) -> None:
        if not self.sub_tags:
            return
        o = self.o
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = o.publishing_interval_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = session.client.get_keepalive_count(
            o.publishing_interval_ms
        )
        # Small publish responses: each is decoded in one go on the event loop,
        # and a big one would stall every printer's stream meanwhile.
        params.MaxNotificationsPerPublish = o.max_notifications_per_publish
        params.PublishingEnabled = True
        params.Priority = 0
        sub = await session.client.create_subscription(
            params, None, queue_maxsize=max(10_000, 50 * len(self.sub_tags))
        )
        sub.__aiter__()  # iterator mode from the start, so the initial values are kept
        nodes = [session.nodes[n] for n in self.sub_tags]
        results = await sub.subscribe_data_change(
            nodes, queuesize=o.queue_size, sampling_interval=o.sampling_interval_ms
        )
        for name, res in zip(self.sub_tags, results, strict=True):
            if isinstance(res, ua.StatusCode):
                raise WrongDevice(f"tags.{name}: cannot be monitored ({res.name})")
        session.sub = sub

    # --- reading ---------------------------------------------------------------

    async def _read(self, session: _Session, names: list[str]) -> list[Sample]:
        out: list[Sample] = []
        for chunk in _chunks(names, self.o.max_nodes_per_read):
            dvs = await session.client.read_attributes([session.nodes[n] for n in chunk])
            out.extend(self._sample(n, dv) for n, dv in zip(chunk, dvs, strict=True))
        return out

    async def read_tags(self, names: list[str]) -> list[Sample]:
        """Batched read of tags (one request per `max_nodes_per_read`); no cache update."""
        session = self._live()
        try:
            return await self._read(session, names)
        except _IO_EXC as exc:
            session.lost.set()
            raise _translate(exc, "read") from None

    def _sample(self, name: str, dv: ua.DataValue) -> Sample:
        tag = self.o.tags[name]
        quality = _quality(dv)
        raw = dv.Value.Value if dv.Value is not None else None
        if raw is None or quality == Quality.BAD:
            last = self._values.get(name)
            value = last.value if last is not None else _DEFAULT[tag.type]
            if quality == Quality.GOOD:
                quality = Quality.BAD
        else:
            try:
                value = _convert(tag.type, raw)
            except (TypeError, ValueError):
                self.log.warning("tag value of the wrong type", tag=name, value=repr(raw)[:80])
                value, quality = _DEFAULT[tag.type], Quality.BAD
        return Sample(name, value, _ts(dv), quality)

    def _store(self, samples: Iterable[Sample]) -> list[Sample]:
        """Update the cache; drop samples older than what is known (replays)."""
        kept = []
        for s in samples:
            old = self._values.get(s.name)
            if old is not None and s.timestamp < old.timestamp and old.quality == Quality.GOOD:
                continue
            self._values[s.name] = s
            kept.append(s)
        if kept:
            self._derive_state()
        return kept

    def _derive_state(self) -> None:
        spec = self.o.state
        if spec is None or not self._connected.is_set():
            if self._connected.is_set() and self._state == DeviceState.UNAVAILABLE:
                self._set_state(DeviceState.IDLE, "connected")
            return
        sample = self._values.get(spec.tag)
        if sample is None or sample.quality == Quality.BAD:
            self._set_state(DeviceState.STOPPED, "robot state unknown (bad quality)")
            return
        raw = str(sample.value)
        state = spec.values.get(raw)
        if state is None:
            self._set_state(DeviceState.STOPPED, f"unmapped robot state {raw!r}")
        else:
            self._set_state(state, raw)
        if spec.alarm_tag:
            alarm = self._values.get(spec.alarm_tag)
            text = str(alarm.value) if alarm is not None else ""
            if text != self._alarm:
                if text:
                    self.ctx.emit(Alarm(self.ctx.device_id, "robot", text, True))
                elif self._alarm:
                    self.ctx.emit(Alarm(self.ctx.device_id, "robot", self._alarm, False))
                self._alarm = text
            self._detail = f"{raw}: {text}" if text else raw

    def _set_state(self, state: DeviceState, reason: str) -> None:
        self._detail = reason
        if state != self._state:
            previous, self._state = self._state, state
            self.ctx.emit(StateChanged(self.ctx.device_id, state, previous, reason))

    def _live(self) -> _Session:
        session = self._session
        if session is None or not self._connected.is_set():
            raise LinkError(f"OPC UA {self.url}: not connected")
        return session

    # --- serve: subscription, polling, heartbeat, reconnect ----------------------

    async def serve(self) -> None:
        while True:
            session = self._live()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._consume(session), name="opcua-consume")
                    tg.create_task(self._poll(session), name="opcua-poll")
                    tg.create_task(self._beat(session), name="opcua-heartbeat")
                    tg.create_task(self._watch(session), name="opcua-watch")
            except BaseExceptionGroup as group:
                _, rest = group.split(_SessionLost)
                if rest is not None:
                    # A refused write or the like: one cellctl error, not a group.
                    first = _first_leaf(rest)
                    self._dead.set()
                    if isinstance(first, CellError):
                        raise first from None
                    raise _translate(first, f"OPC UA {self.url}") from first
            await self._reconnect(session)

    async def _watch(self, session: _Session) -> None:
        await session.lost.wait()
        raise _SessionLost(session.lost_reason)

    async def _consume(self, session: _Session) -> None:
        sub = session.sub
        if sub is None:
            return
        queue: asyncio.Queue[Any] | None = getattr(sub, "_event_queue", None)
        while True:
            try:
                events = [await sub.__anext__()]
            except StopAsyncIteration:  # the subscription was closed under us
                session.lost.set()
                return
            # Drain what already arrived: one Samples event per publish, not per item.
            while queue is not None and not queue.empty():
                events.append(queue.get_nowait())
            batch: list[Sample] = []
            for n, ev in enumerate(events, start=1):
                if ev is None:
                    session.lost.set()
                    return
                data = getattr(ev, "data", None)
                if data is None:
                    continue  # a status change: the watch task handles a dead session
                name = session.by_nodeid.get(ev.node.nodeid)
                if name is not None:
                    batch.append(self._sample(name, data.monitored_item.Value))
                if n % _CONSUME_CHUNK == 0:
                    # Let the rest of the cell run between chunks of a big burst.
                    await self._publish(batch)
                    batch = []
                    await asyncio.sleep(0)
            await self._publish(batch)

    async def _publish(self, batch: list[Sample]) -> None:
        if not batch:
            return
        kept = self._store(batch)
        if kept:
            self.ctx.emit(Samples(self.ctx.device_id, tuple(kept)))
        async with self._changed:
            self._changed.notify_all()

    async def _poll(self, session: _Session) -> None:
        if not self.poll_tags:
            return
        while True:
            try:
                batch = await self._read(session, self.poll_tags)
            except _IO_EXC as exc:
                session.lost_reason = str(_translate(exc, "poll"))
                session.lost.set()
                return
            await self._publish(batch)
            await asyncio.sleep(self.o.poll_interval_s)

    async def _beat(self, session: _Session) -> None:
        hb = self.o.heartbeat
        if hb is None:
            return
        while True:
            self._heartbeat = (self._heartbeat + 1) % 2_147_483_647
            try:
                await self._write(session, hb.tag, self._heartbeat)
            except LinkError as exc:
                session.lost_reason = str(exc)
                session.lost.set()
                return
            await asyncio.sleep(hb.interval_s)

    async def _reconnect(self, old: _Session) -> None:
        """Re-create the session within the grace period, or raise LinkError."""
        self._connected.clear()
        self._session = None
        reason = old.lost_reason or "session lost"
        self.log.warning("OPC UA session lost; re-creating it", reason=reason)
        self._mark_stale(reason)
        await self._close(old)
        deadline = time.monotonic() + self.o.reconnect_grace_s
        delay = 0.2
        last = reason
        while True:
            try:
                session = await self._open()
            except WrongDevice:
                self._dead.set()
                raise
            except LinkError as exc:
                last = str(exc)
                if time.monotonic() + delay > deadline:
                    self._dead.set()
                    raise LinkError(f"OPC UA session lost and not re-created: {last}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        self._session = session
        self._connected.set()
        self.reconnects += 1
        self._derive_state()
        self.log.info("OPC UA session re-created; subscriptions restored")
        async with self._changed:
            self._changed.notify_all()

    def _mark_stale(self, reason: str) -> None:
        """Link down: the last values are published once more, as BAD, and nothing good."""
        now = time.time()
        stale = tuple(
            Sample(s.name, s.value, now, Quality.BAD)
            for s in self._values.values()
            if s.name in self.metric_tags
        )
        for s in stale:
            self._values[s.name] = s
        if stale:
            self.ctx.emit(Samples(self.ctx.device_id, stale))
        self._set_state(DeviceState.UNAVAILABLE, f"reconnecting: {reason}")

    # --- writing and commands ----------------------------------------------------

    async def _write(
        self, session: _Session, tag: str, value: MetricValue, *, urgent: bool = False
    ) -> None:
        if not urgent:
            await self._limiter.acquire()
        vtype = session.vtypes.get(tag) or _VARIANT_FOR[self.o.tags[tag].type]
        try:
            await session.nodes[tag].write_attribute(
                AttributeIds.Value, ua.DataValue(ua.Variant(value, vtype))
            )
        except UaStatusCodeError as exc:
            raise WrongDevice(f"write {tag}: refused ({_status_name(exc.code)})") from None
        except _IO_EXC as exc:
            session.lost.set()
            raise _translate(exc, f"write {tag}") from None

    async def write_tag(self, tag: str, value: MetricValue) -> None:
        """Write a configured tag (rate-limited)."""
        await self._write(self._live(), tag, value)

    async def _call(
        self, session: _Session, obj: str, method: str, args: Sequence[MetricValue]
    ) -> list[Any]:
        objnode = session.client.get_node(self._nodeid(obj, "object"))
        mid = self._nodeid(method, "method")
        try:
            result = await objnode.call_method(mid, *[_variant(a) for a in args])
        except UaStatusCodeError:
            raise
        except _IO_EXC as exc:
            session.lost.set()
            raise _translate(exc, f"call {method}") from None
        if result is None:
            return []
        return list(result) if isinstance(result, list) else [result]

    async def _action(self, key: str, *, urgent: bool = False) -> None:
        spec: ActionSpec | None = getattr(self.o, key)
        if spec is None:
            raise NotSupported(f"no {key} configured for this device")
        session = self._live()
        if spec.tag is not None:
            await self._write(session, spec.tag, spec.value, urgent=urgent)
            return
        assert spec.method is not None and spec.object is not None
        if not urgent:
            await self._limiter.acquire()
        try:
            await self._call(session, spec.object, spec.method, spec.args)
        except UaStatusCodeError as exc:
            raise NotSupported(f"{key}: the robot refused ({_status_name(exc.code)})") from None

    async def pause(self) -> None:
        await self._action("pause")

    async def resume(self) -> None:
        await self._action("resume")

    async def stop(self) -> None:
        self._stop_requested = True
        await self._action("stop")

    async def emergency_stop(self) -> None:
        self._stop_requested = True
        async with asyncio.timeout(min(self.o.timeout_s, 0.9)):
            await self._action("emergency_stop", urgent=True)

    async def reset(self) -> None:
        await self._action("reset")

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("a robot's changeover (gripper, fixture) is done by an operator")

    # --- running a program ----------------------------------------------------------

    def _program_number(self, spec: ProgramSpec, step: Step) -> int:
        name = step.program.name.strip()
        if name in spec.programs:
            return int(spec.programs[name])
        if name.lstrip("-").isdigit():
            return int(name)
        known = ", ".join(sorted(spec.programs)) or "none"
        raise NotSupported(f"unknown robot program {name!r} (known: {known}, or a number)")

    async def _wait(self, pred: Callable[[], bool], within: float) -> bool:
        """Wait until pred() holds on the cached values; False on timeout.

        Raises _SessionLost as soon as the link is down, LinkError when it is gone."""
        generation = self._generation
        try:
            async with asyncio.timeout(within), self._changed:
                while True:
                    if self._dead.is_set():
                        raise LinkError(f"OPC UA {self.url}: link lost")
                    if not self._connected.is_set() or self._generation != generation:
                        raise _SessionLost("link lost")
                    if pred():
                        return True
                    await self._wait_changed()
        except TimeoutError:
            return False

    async def _wait_changed(self) -> None:
        # Wake on value changes and, at least every 0.2 s, to notice a dropped link.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await self._changed.wait()

    async def _wait_reconnected(self) -> None:
        """Wait for serve() to re-create the session; LinkError if it gives up."""
        while not self._connected.is_set():
            if self._dead.is_set():
                raise LinkError(f"OPC UA {self.url}: link lost and not re-created")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._connected.wait()

    async def _fresh(self, names: list[str | None]) -> dict[str, MetricValue]:
        """Read tags now (not from the cache) and store them; for decisions that matter."""
        wanted = [n for n in names if n is not None]
        session = self._live()
        try:
            samples = await self._read(session, wanted)
        except _IO_EXC as exc:
            session.lost.set()
            raise _SessionLost(str(exc)) from None
        self._store(samples)
        return {s.name: s.value for s in samples if s.quality != Quality.BAD}

    def _cached(self, tag: str | None) -> MetricValue | None:
        return None if tag is None else self.value(tag)

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        spec = self.o.program
        if spec is None:
            raise NotSupported("no program configured: this device runs no job steps")
        number = self._program_number(spec, step)
        async with self._step_lock:
            self._stop_requested = False
            progress(Progress(fraction=0.0))
            started = await self._start(spec, number, step)
            if isinstance(started, StepResult):
                return started
            return await self._follow(spec, number, started, progress)

    async def _start(self, spec: ProgramSpec, number: int, step: Step) -> StepResult | int | None:
        """Start the program once. Returns the run counter of the new run (None if the
        robot has none), or the step's result if it never started."""
        await self._wait_reconnected()
        before = await self._fresh_or_interrupted(
            [spec.run_counter_tag, self.o.state.tag if self.o.state else None]
        )
        if isinstance(before, StepResult):
            return before
        if self._state not in (DeviceState.IDLE, DeviceState.COMPLETE):
            return StepResult(StepOutcome.FAILED, f"robot not ready ({self._detail})")
        counter0 = before.get(spec.run_counter_tag or "")
        try:
            if spec.start == "method":
                failed = await self._start_method(spec, number, step)
            else:
                failed = await self._start_handshake(spec, number)
        except (_SessionLost, LinkError) as exc:
            # We do not know whether the robot took the start: look, never retry.
            return await self._after_lost_start(spec, counter0, str(exc))
        if failed is not None:
            return failed
        after = await self._fresh_or_interrupted(
            [spec.run_counter_tag, spec.error_tag, spec.done_tag, self._state_tag()]
        )
        if isinstance(after, StepResult):
            return await self._after_lost_start(spec, counter0, after.message)
        if spec.error_tag and after.get(spec.error_tag):
            return StepResult(
                StepOutcome.FAILED, f"robot refused program {number}: error {after[spec.error_tag]}"
            )
        counter = after.get(spec.run_counter_tag or "")
        if spec.run_counter_tag and counter == counter0:
            return StepResult(
                StepOutcome.FAILED, f"robot acknowledged program {number} but did not start it"
            )
        return int(counter) if counter is not None else None

    async def _fresh_or_interrupted(
        self, names: list[str | None]
    ) -> dict[str, MetricValue] | StepResult:
        for _ in range(2):
            try:
                return await self._fresh(names)
            except (_SessionLost, LinkError):
                await self._wait_reconnected()
        return StepResult(StepOutcome.INTERRUPTED, "link lost while reading the robot")

    async def _after_lost_start(
        self, spec: ProgramSpec, counter0: MetricValue | None, why: str
    ) -> StepResult | int | None:
        await self._wait_reconnected()
        if spec.start == "handshake" and spec.request_tag:
            with contextlib.suppress(CellError, _SessionLost):
                await self._write(self._live(), spec.request_tag, False)
        now = await self._fresh_or_interrupted([spec.run_counter_tag])
        if isinstance(now, StepResult):
            return now
        counter = now.get(spec.run_counter_tag or "")
        if spec.run_counter_tag and counter is not None and counter != counter0:
            self.log.info("the robot took the start before the link dropped; following it")
            return int(counter)
        return StepResult(
            StepOutcome.INTERRUPTED, f"link lost while starting; the robot did not start ({why})"
        )

    async def _start_method(self, spec: ProgramSpec, number: int, step: Step) -> StepResult | None:
        assert spec.method is not None and spec.object is not None
        args: list[MetricValue] = []
        for a in spec.args:
            if a == "$program":
                args.append(number)
            elif isinstance(a, str) and a.startswith("$param."):
                key = a.removeprefix("$param.")
                if key not in step.program.parameters:
                    return StepResult(StepOutcome.FAILED, f"step has no parameter {key!r}")
                args.append(step.program.parameters[key])
            else:
                args.append(a)
        await self._limiter.acquire()
        try:
            out = await self._call(self._live(), spec.object, spec.method, args)
        except UaStatusCodeError as exc:
            return StepResult(StepOutcome.FAILED, f"start method refused: {_status_name(exc.code)}")
        if (
            out
            and isinstance(out[0], int)
            and not isinstance(out[0], bool)
            and out[0] != spec.result_ok
        ):
            return StepResult(
                StepOutcome.FAILED, f"robot refused program {number}: result {out[0]}"
            )
        return None

    async def _start_handshake(self, spec: ProgramSpec, number: int) -> StepResult | None:
        assert spec.number_tag and spec.request_tag and spec.ack_tag
        ack = spec.ack_tag
        session = self._live()
        if self.value(ack):
            if not await self._wait(lambda: not self.value(ack), spec.clear_timeout_s):
                return StepResult(StepOutcome.FAILED, f"{ack} is still set from an earlier request")
        await self._write(session, spec.number_tag, number)
        await self._write(session, spec.request_tag, True)
        acked = await self._wait(lambda: bool(self.value(ack)), spec.ack_timeout_s)
        await self._write(session, spec.request_tag, False)
        if not acked:
            return StepResult(
                StepOutcome.FAILED,
                f"no acknowledge of program {number} within {spec.ack_timeout_s}s",
            )
        if not await self._wait(lambda: not self.value(ack), spec.clear_timeout_s):
            self.log.warning("acknowledge did not fall after the request was cleared", tag=ack)
        return None

    async def _follow(
        self, spec: ProgramSpec, number: int, run: int | None, progress: ProgressSink
    ) -> StepResult:
        deadline = time.monotonic() + spec.done_timeout_s
        last_fraction: float | None = None
        seen_running = False
        # Without a run counter, a done still latched from the previous run must
        # be seen to fall before a done counts.
        done_armed = run is not None or not self._cached(spec.done_tag)

        def done() -> bool:
            nonlocal done_armed
            value = bool(self._cached(spec.done_tag))
            if not value:
                done_armed = True
            return value and done_armed

        def mine() -> bool:
            return run is None or self._cached(spec.run_counter_tag) == run

        def finished() -> bool:
            nonlocal last_fraction, seen_running
            if spec.progress_tag:
                frac = self._cached(spec.progress_tag)
                if isinstance(frac, int | float) and frac != last_fraction and mine():
                    last_fraction = float(frac)
                    progress(Progress(fraction=max(0.0, min(1.0, last_fraction))))
            if self._state in (DeviceState.EXECUTE, DeviceState.HELD, DeviceState.SUSPENDED):
                seen_running = True
            if not mine():
                return True
            if done() or (spec.error_tag and self._cached(spec.error_tag)):
                return True
            return self._state in (
                DeviceState.IDLE,
                DeviceState.STOPPED,
                DeviceState.ABORTED,
                DeviceState.COMPLETE,
            ) and (seen_running or self._stop_requested)

        while True:
            remaining = deadline - time.monotonic()
            try:
                if not await self._wait(finished, max(0.0, remaining)):
                    return StepResult(
                        StepOutcome.FAILED,
                        f"program {number} did not finish within {spec.done_timeout_s}s",
                    )
            except _SessionLost:
                await self._wait_reconnected()
                if spec.after_reconnect == "interrupt":
                    return StepResult(
                        StepOutcome.INTERRUPTED, f"link lost while program {number} ran"
                    )
                # Decide on what the robot says now, not on what we last saw.
                now = await self._fresh_or_interrupted(
                    [spec.run_counter_tag, spec.done_tag, spec.error_tag, self._state_tag()]
                )
                if isinstance(now, StepResult):
                    return now
                seen_running = True  # it ran before the link dropped
                continue
            break
        if not mine():
            return StepResult(
                StepOutcome.INTERRUPTED, "the robot's run counter moved on: another run started"
            )
        if spec.error_tag and self._cached(spec.error_tag):
            return StepResult(
                StepOutcome.FAILED,
                f"program {number} failed: error {self._cached(spec.error_tag)} ({self._detail})",
            )
        if done():
            progress(Progress(fraction=1.0, remaining_s=0.0))
            return StepResult(StepOutcome.DONE)
        if self._stop_requested:
            return StepResult(StepOutcome.CANCELLED, f"program {number} stopped on request")
        return StepResult(
            StepOutcome.FAILED, f"program {number} ended without done ({self._detail})"
        )

    def _state_tag(self) -> str | None:
        return self.o.state.tag if self.o.state else None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


__all__ = ["AccessDenied", "OpcUaDriver", "OpcUaOptions", "TagSpec"]
