"""One OPC UA session, on the client thread: connect, resolve, subscribe, read, write, call.

Every method here runs on the driver's client loop (`clientthread.ClientThread`)
and is the only code that touches asyncua. Failures leave as cellctl errors
(`boundary.translate`); a failure that means the session is gone also calls
`on_lost` once, which tells the daemon's loop.

Subscriptions use asyncua's low-level client (`client.uaclient`) directly: the
publish callback gets each PublishResult whole and turns its data changes into
samples without the per-item Node and notification objects of asyncua's
`Subscription` class, which cost as much again as decoding the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509

from cellctl.errors import CellError, LinkError, WrongDevice
from cellctl.model import MetricValue, Sample

from . import certs
from .boundary import IO_EXC, AccessDenied, Refused, TypeMismatch, UntrustedServer, status_name
from .boundary import translate as _translate
from .datatypes import HEARTBEAT, to_variant
from .options import OpcUaOptions
from .tagmap import VARIANT_FOR, Coalescer, TagMap

# Raised by asyncua while encoding a value that does not fit its Variant type: the
# request never left, so the session is fine (not an I/O failure).
_ENCODE_EXC = (struct.error, OverflowError, ValueError, TypeError)


@dataclass(frozen=True)
class Argument:
    """One declared input argument of a method (its InputArguments property)."""

    name: str
    vtype: ua.VariantType | None  # None: the server's DataType is abstract or unknown
    array: bool


class TrustList:
    """Server certificates we accept (drivers/opcua/certs.py: pinned, or signed by a
    trusted CA); warns once when the list is empty."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.trust = certs.Trust()
        self._warned = False

    def load(self, options: OpcUaOptions) -> None:
        try:
            found = certs.trusted_certificates(list(options.trusted_server_certs))
        except (OSError, ValueError) as exc:
            raise AccessDenied(f"trusted_server_certs: cannot read a certificate: {exc}") from None
        self.trust = certs.Trust.of(found)

    def check(self, cert: Any) -> None:
        if self.trust.empty:
            if not self._warned:
                self._warned = True
                self.log.warning(
                    "server certificate accepted without a trust list",
                    fingerprint=certs.fingerprint(cert),
                )
            return
        why = self.trust.refusal(cert)
        if why is not None:
            raise UntrustedServer(why)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Session:
    """One asyncua client session with everything resolved against it. Client thread only."""

    def __init__(
        self,
        *,
        url: str,
        device_id: str,
        options: OpcUaOptions,
        tags: TagMap,
        trust: TrustList,
        sink: Coalescer,
        on_lost: Callable[[str], None],
        log: Any,
    ) -> None:
        self.url = url
        self.device_id = device_id
        self.o = options
        self.tags = tags
        self.trust = trust
        self.sink = sink
        self._on_lost = on_lost
        self.log = log
        self.what = f"OPC UA {url}"
        self.client: Client | None = None
        self.nodes: dict[str, ua.NodeId] = {}
        self.vtypes: dict[str, ua.VariantType] = {}  # tag → its node's DataType, at connect
        self.signatures: dict[str, tuple[Argument, ...] | None] = {}  # method node → inputs
        self._handles: dict[int, str] = {}
        self._ns_array: list[str] = []
        self._default_ns: int | None = None
        self.lost = False

    # --- losing it -------------------------------------------------------------

    def lose(self, reason: str) -> None:
        """The session is gone: say so once."""
        if not self.lost:
            self.lost = True
            self._on_lost(reason)

    def _io_failed(self, exc: BaseException, what: str) -> CellError:
        err = _translate(exc, what)
        self.lose(str(err))
        return err

    # --- open / close ----------------------------------------------------------

    def _check_files(self) -> None:
        """Local set-up mistakes, each one clear error, before any network traffic."""
        o = self.o
        if not self.url:
            raise WrongDevice('no endpoint: set endpoint = "opc.tcp://host:port/…"')
        for key in ("certificate", "private_key"):
            path = getattr(o, key)
            if path is not None and not path.is_file():
                raise AccessDenied(f"{key} {str(path)!r} is not a readable file")
        self.trust.load(o)

    def _make_client(self) -> Client:
        o = self.o
        client = Client(self.url, timeout=o.timeout_s, watchdog_intervall=o.keepalive_s)
        client.name = f"cellctl {self.device_id}"
        client.description = client.name
        client.application_uri = f"urn:cellctl:{self.device_id}"
        if o.certificate is not None:
            uri = certs.application_uri(certs.load_certificate(o.certificate))
            if uri:
                client.application_uri = uri  # must match the certificate's
        if o.username is not None and o.password is not None:
            client.set_user(o.username)
            client.set_password(o.password.reveal())

        async def validate(cert: Any, app: Any) -> None:
            self.trust.check(cert)

        client.certificate_validator = validate
        return client

    async def open(self) -> list[Sample]:
        """Connect, resolve the tag map, read every metric tag, subscribe.

        Returns the values read, so that the state is right as soon as we are connected."""
        o = self.o
        self._check_files()
        try:
            client = self.client = self._make_client()
        except (OSError, ValueError) as exc:
            raise AccessDenied(f"certificate {str(o.certificate)!r}: {exc}") from None
        try:
            async with asyncio.timeout(o.timeout_s * 3):
                if o.security_policy == "Basic256Sha256":
                    assert o.certificate is not None and o.private_key is not None
                    await client.set_security(
                        SecurityPolicyBasic256Sha256,
                        certificate=str(o.certificate),
                        private_key=str(o.private_key),
                        mode=getattr(ua.MessageSecurityMode, o.security_mode),
                    )
                    # set_security fetched the endpoints: the server certificate is
                    # known now, so check it before any session is created.
                    peer = client.security_policy.peer_certificate
                    if peer:
                        self.trust.check(x509.load_der_x509_certificate(peer))

                async def lost(exc: Exception) -> None:
                    self.lose(str(exc) or type(exc).__name__)

                client.connection_lost_callback = lost
                await client.connect()
            async with asyncio.timeout(o.timeout_s * 3):
                await self._resolve()
                fresh = await self.read(list(self.tags.metric_tags))
                await self._subscribe()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _translate(exc, self.what) from None
        return fresh

    async def close(self) -> None:
        self.lost = True  # closing on purpose: no loss to report
        client, self.client = self.client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.disconnect()
        # A client whose server vanished may not get that far: stop its tasks anyway.
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    def _live(self) -> Client:
        if self.client is None or self.lost:
            raise LinkError(f"{self.what}: not connected")
        return self.client

    # --- namespaces and nodes ----------------------------------------------------

    def _ns_index(self, uri: str, where: str) -> int:
        if uri not in self._ns_array:
            raise WrongDevice(
                f"{where}: namespace {uri!r} is not on this server (it has {self._ns_array[1:]})"
            )
        return self._ns_array.index(uri)

    def nodeid(self, text: str, where: str) -> ua.NodeId:
        if text.startswith("nsu="):
            uri, _, rest = text[4:].partition(";")
            return ua.NodeId.from_string(f"ns={self._ns_index(uri, where)};{rest}")
        assert self._default_ns is not None
        return ua.NodeId.from_string(f"ns={self._default_ns};{text}")

    async def _resolve(self) -> None:
        """Namespace URIs → this server's indexes; check every tag's node exists."""
        o = self.o
        client = self._live()
        self._ns_array = await client.get_namespace_array()
        if o.namespace_uri:
            self._default_ns = self._ns_index(o.namespace_uri, "namespace_uri")
        for name, tag in o.tags.items():
            self.nodes[name] = self.nodeid(tag.node, f"tags.{name}")
        names = list(self.nodes)
        for chunk in _chunks(names, o.max_nodes_per_read):
            results = await client.uaclient.read_attributes(
                [self.nodes[n] for n in chunk], AttributeIds.DataType
            )
            for name, dv in zip(chunk, results, strict=True):
                if dv.StatusCode is not None and not dv.StatusCode.is_good():
                    raise WrongDevice(
                        f"tags.{name}: node {o.tags[name].node!r} is not on this server "
                        f"({status_name(dv.StatusCode.value)})"
                    )
                dt = dv.Value.Value if dv.Value is not None else None
                vtype = await self._variant_type(dt)
                if vtype is None:
                    vtype = await self._value_type(self.nodes[name])
                if vtype is not None:
                    self.vtypes[name] = vtype
        hb = o.heartbeat
        if hb is not None:
            vtype = self.vtypes.get(hb.tag) or VARIANT_FOR[o.tags[hb.tag].type]
            if vtype not in HEARTBEAT:
                raise WrongDevice(
                    f"heartbeat.tag: node {o.tags[hb.tag].node!r} is a {vtype.name}; "
                    "a heartbeat needs an integer or Boolean node"
                )
        for method in self._configured_methods():
            self.signatures[method] = await self._signature(method)

    def _configured_methods(self) -> list[str]:
        o = self.o
        out: list[str] = []
        if o.program is not None and o.program.start == "method" and o.program.method:
            out.append(o.program.method)
        for key in ("pause", "resume", "stop", "emergency_stop", "reset"):
            action = getattr(o, key)
            if action is not None and action.method is not None:
                out.append(action.method)
        return out

    async def _variant_type(self, datatype: object) -> ua.VariantType | None:
        """The built-in type a DataType node id encodes as; None when abstract or unknown."""
        if not isinstance(datatype, ua.NodeId):
            return None
        if datatype.NamespaceIndex == 0 and isinstance(datatype.Identifier, int):
            if 1 <= datatype.Identifier <= 25:
                return ua.VariantType(datatype.Identifier)
        try:
            # A subtype (UtcTime, Duration, a vendor's Int16 …) or an enumeration.
            vtype = await data_type_to_variant_type(self._live().get_node(datatype))
        except (*IO_EXC, ValueError):
            return None
        return None if vtype == ua.VariantType.Variant else vtype

    async def _value_type(self, node: ua.NodeId) -> ua.VariantType | None:
        """An abstract DataType (BaseDataType, Number …): the type of the value it holds."""
        try:
            dv = (await self._live().uaclient.read_attributes([node], AttributeIds.Value))[0]
        except IO_EXC:
            return None
        vtype = dv.Value.VariantType if dv.Value is not None else None
        return None if vtype in (None, ua.VariantType.Null) else vtype

    async def _signature(self, method: str) -> tuple[Argument, ...] | None:
        """A method's declared input arguments; None when the server does not say."""
        client = self._live()
        node = client.get_node(self.nodeid(method, "method"))
        try:
            prop = await node.get_child("0:InputArguments")
        except UaStatusCodeError as exc:
            if exc.code == StatusCodes.BadNoMatch:
                return ()  # no InputArguments property: the method takes none
            self.log.warning("method signature unknown", method=method, why=str(exc))
            return None
        except IO_EXC as exc:
            self.log.warning("method signature unknown", method=method, why=str(exc))
            return None
        try:
            declared = await prop.read_value()
        except IO_EXC as exc:
            self.log.warning("method signature unknown", method=method, why=str(exc))
            return None
        out: list[Argument] = []
        for arg in declared or ():
            vtype = await self._variant_type(getattr(arg, "DataType", None))
            rank = getattr(arg, "ValueRank", -1)
            array = rank is not None and rank >= 0
            out.append(Argument(str(getattr(arg, "Name", "")), vtype, array))
        return tuple(out)

    # --- subscription --------------------------------------------------------------

    async def _subscribe(self) -> None:
        names = self.tags.sub_tags
        if not names:
            return
        o = self.o
        client = self._live()
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = o.publishing_interval_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(o.publishing_interval_ms)
        params.MaxNotificationsPerPublish = o.max_notifications_per_publish
        params.PublishingEnabled = True
        params.Priority = 0
        result = await client.uaclient.create_subscription(params, self._on_publish)
        self._handles = {}
        requests = []
        for handle, name in enumerate(names, start=1):
            self._handles[handle] = name
            item = ua.ReadValueId()
            item.NodeId = self.nodes[name]
            item.AttributeId = AttributeIds.Value
            mp = ua.MonitoringParameters()
            mp.ClientHandle = handle
            mp.SamplingInterval = o.sampling_interval_ms
            mp.QueueSize = o.queue_size
            mp.DiscardOldest = True
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = item
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            requests.append(req)
        create = ua.CreateMonitoredItemsParameters()
        create.SubscriptionId = result.SubscriptionId
        create.TimestampsToReturn = ua.TimestampsToReturn.Both
        create.ItemsToCreate = requests
        results = await client.uaclient.create_monitored_items(create)
        for name, res in zip(names, results, strict=True):
            if not res.StatusCode.is_good():
                raise WrongDevice(f"tags.{name}: cannot be monitored ({res.StatusCode.name})")

    def _on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop hands over each response: samples to the coalescer."""
        handles = self._handles
        sample = self.tags.sample
        out: list[Sample] = []
        for data in result.NotificationMessage.NotificationData:
            if isinstance(data, ua.DataChangeNotification):
                for item in data.MonitoredItems:
                    name = handles.get(item.ClientHandle)
                    if name is not None:
                        out.append(sample(name, item.Value))
            elif isinstance(data, ua.StatusChangeNotification) and not data.Status.is_good():
                # The server dropped the subscription (or asyncua saw the link go).
                self.lose(f"subscription ended: {data.Status.name}")
        if out:
            self.sink.put(out)

    # --- reading, polling, writing, calling ------------------------------------------

    async def read(self, names: list[str]) -> list[Sample]:
        """Batched read: one request per `max_nodes_per_read`."""
        client = self._live()
        out: list[Sample] = []
        try:
            for chunk in _chunks(names, self.o.max_nodes_per_read):
                dvs = await client.uaclient.read_attributes(
                    [self.nodes[n] for n in chunk], AttributeIds.Value
                )
                out.extend(self.tags.sample(n, dv) for n, dv in zip(chunk, dvs, strict=True))
        except IO_EXC as exc:
            raise self._io_failed(exc, "read") from None
        return out

    async def poll(self) -> None:
        """Read the polled tags every `poll_interval_s` into the coalescer, until lost."""
        names = self.tags.poll_tags
        if not names:
            return
        while not self.lost:
            try:
                batch = await self.read(names)
            except CellError:
                return  # read() reported the loss
            self.sink.put(batch)
            await asyncio.sleep(self.o.poll_interval_s)

    async def write(self, tag: str, value: MetricValue) -> None:
        client = self._live()
        # The node's DataType as read at connect; the config's type if the server hid it.
        vtype = self.vtypes.get(tag) or VARIANT_FOR[self.o.tags[tag].type]
        what = f"write {tag}"
        v = to_variant(value, vtype, what)
        try:
            results = await client.uaclient.write_attributes(
                [self.nodes[tag]], [ua.DataValue(v)], AttributeIds.Value
            )
        except IO_EXC as exc:
            raise self._io_failed(exc, what) from None
        except _ENCODE_EXC as exc:
            raise TypeMismatch(f"{what}: {value!r} cannot be sent as {vtype.name}: {exc}") from None
        if not results[0].is_good():
            raise Refused(what, status_name(results[0].value))

    async def arguments(self, method: str, args: Sequence[MetricValue]) -> list[ua.Variant]:
        """`args` as the method declares them (read at connect, or now for another method)."""
        if method not in self.signatures:
            self.signatures[method] = await self._signature(method)
        declared = self.signatures[method]
        what = f"call {method}"
        if declared is None:
            return [to_variant(a, None, f"{what} argument {i}") for i, a in enumerate(args, 1)]
        if len(declared) != len(args):
            types = ", ".join(d.vtype.name if d.vtype else "?" for d in declared)
            raise TypeMismatch(
                f"{what}: the method takes {len(declared)} argument(s) ({types}), {len(args)} given"
            )
        out = []
        for i, (d, a) in enumerate(zip(declared, args, strict=True), 1):
            where = f"{what} argument {i}" + (f" ({d.name})" if d.name else "")
            if d.array:
                raise TypeMismatch(f"{where}: the method wants an array; cellctl sends scalars")
            out.append(to_variant(a, d.vtype, where))
        return out

    async def call(self, obj: str, method: str, args: Sequence[MetricValue]) -> list[Any]:
        client = self._live()
        request = ua.CallMethodRequest()
        request.ObjectId = self.nodeid(obj, "object")
        request.MethodId = self.nodeid(method, "method")
        try:
            request.InputArguments = await self.arguments(method, args)
        except IO_EXC as exc:
            raise self._io_failed(exc, f"call {method}") from None
        try:
            results = await client.uaclient.call([request])
        except IO_EXC as exc:
            raise self._io_failed(exc, f"call {method}") from None
        except _ENCODE_EXC as exc:
            raise TypeMismatch(f"call {method}: arguments cannot be encoded: {exc}") from None
        res = results[0]
        if not res.StatusCode.is_good():
            raise Refused(f"call {method}", status_name(res.StatusCode.value))
        return [v.Value for v in res.OutputArguments]
