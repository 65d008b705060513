"""A simulated robot cell on a real asyncua server (`cellctl sim opcua-robot`).

Address space (namespace `namespace_uri`, string node ids):

    Robot.State (String)        IDLE RUNNING PAUSED STOPPED ESTOP FAULT
    Robot.Mode (String)         AUTO
    Robot.ProgramNumber (Int32, writable)    program to start by handshake
    Robot.StartRequest (Boolean, writable)   handshake: host sets, robot acks
    Robot.StartAck (Boolean)    set on a request's rising edge, cleared when it falls
    Robot.ProgramDone (Boolean) latched when a program ends, cleared by the next start
    Robot.ErrorCode (Int32)     0 ok, 3 not ready, 5 interlock, 7 unknown program, 42 gripper
    Robot.ActiveProgram, Robot.RunCounter (Int32), Robot.Progress, Robot.CycleTime (Double)
    Robot.J1 … Robot.J6 (Double, degrees), Robot.DoorClosed, Robot.ZoneClear (Boolean)
    Robot.Heartbeat (Int32, writable), Robot.WatchdogOk (Boolean), Robot.Alarm (String)
    Robot.SpeedOverride (Double, writable): a setpoint the model accepts and ignores
    Robot.PauseRequest/ResumeRequest/StopRequest/ResetRequest/EStopRequest (Boolean,
        writable, cleared by the robot once acted on)
    Methods on Robot: StartProgram(Int32) -> Int32, Pause, Resume, Stop, EmergencyStop, Reset

Data types other controllers use are options (stock: the types above):
`heartbeat_type` (Boolean or an integer type), `program_number_type` (Robot.ProgramNumber
and StartProgram's argument) and `float_type` (Double or Float: Progress, CycleTime,
J1…J6, SpeedOverride). Like node-opcua, StartProgram refuses an argument of another
type (BadInvalidArgument, its InputArgumentResult BadTypeMismatch); asyncua itself
refuses a write of another type (BadTypeMismatch). `retype()` changes them at run time.
    Bulk.B0000 … (Double, `bulk_tags` of them, changed at `bulk_rate_hz`): load for benchmarks

Fault injection: `restart(downtime_s)` tears the server down and rebuilds it on
the same port (the arm keeps moving); `slow_s` delays every read, write and
method call; `inject_bad_status(tag)` publishes a Bad status on a tag;
`fail_start_status` makes StartProgram answer with a bad status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from asyncua import ua
from asyncua.common.callback import CallbackType
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from cellctl_drivers.opcua.certs import fingerprint, make_certificate, trusted_fingerprints
from cellctl_drivers.opcua.quiet import quiet_asyncua
from cellctl_drivers.opcua.robot import Robot, RobotState
from cellctl_drivers.opcua.simoptions import RobotSimOptions

from cellctl.driver import TaskGroup

SIM_APP_URI = "urn:cellctl:sim:robot-server"

_V = ua.VariantType
# name → (variant type, initial value, writable by clients)
_TAGS: dict[str, tuple[ua.VariantType, Any, bool]] = {
    "State": (_V.String, "IDLE", False),
    "Mode": (_V.String, "AUTO", False),
    "ProgramNumber": (_V.Int32, 0, True),
    "StartRequest": (_V.Boolean, False, True),
    "StartAck": (_V.Boolean, False, False),
    "ProgramDone": (_V.Boolean, False, False),
    "ErrorCode": (_V.Int32, 0, False),
    "ActiveProgram": (_V.Int32, 0, False),
    "RunCounter": (_V.Int32, 0, False),
    "Progress": (_V.Double, 0.0, False),
    "CycleTime": (_V.Double, 0.0, False),
    **{f"J{i}": (_V.Double, 0.0, False) for i in range(1, 7)},
    "DoorClosed": (_V.Boolean, True, False),
    "ZoneClear": (_V.Boolean, True, False),
    "Heartbeat": (_V.Int32, 0, True),
    "WatchdogOk": (_V.Boolean, True, False),
    "Alarm": (_V.String, "", False),
    "PauseRequest": (_V.Boolean, False, True),
    "ResumeRequest": (_V.Boolean, False, True),
    "StopRequest": (_V.Boolean, False, True),
    "ResetRequest": (_V.Boolean, False, True),
    "EStopRequest": (_V.Boolean, False, True),
    "SpeedOverride": (_V.Double, 100.0, True),
}
_FLOATS = ("Progress", "CycleTime", *(f"J{i}" for i in range(1, 7)), "SpeedOverride")
_COMMAND_BITS = ("PauseRequest", "ResumeRequest", "StopRequest", "ResetRequest", "EStopRequest")


def _nid(name: str, idx: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(idx))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tag_types(o: RobotSimOptions) -> dict[str, ua.VariantType]:
    """Each tag's DataType under these options."""
    out = {name: vtype for name, (vtype, _, _) in _TAGS.items()}
    out["Heartbeat"] = _V.__members__[o.heartbeat_type]
    out["ProgramNumber"] = _V.__members__[o.program_number_type]
    for name in _FLOATS:
        out[name] = _V.__members__[o.float_type]
    return out


def _initial(vtype: ua.VariantType, value: Any) -> Any:
    if vtype == _V.Boolean:
        return bool(value)
    if vtype in (_V.Float, _V.Double):
        return float(value)
    if vtype == _V.String:
        return value
    return int(value)


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not self.users:
            return User(role=UserRole.User)
        if username is None or self.users.get(username) != password:
            return None
        return User(role=UserRole.User, name=username)


class RobotSim:
    """Simulator entry point `opcua-robot`."""

    name: ClassVar[str] = "opcua-robot"
    Options: ClassVar[type[RobotSimOptions]] = RobotSimOptions

    def __init__(self, options: RobotSimOptions | None = None) -> None:
        self.options = options or RobotSimOptions()
        o = self.options
        self.robot = Robot(
            programs=dict(o.programs),
            failing=dict(o.failing_programs),
            time_factor=o.time_factor,
            heartbeat_timeout_s=o.heartbeat_timeout_s,
        )
        self.port = o.port
        self.slow_s = o.slow_s
        self.fail_start_status = o.fail_start_status
        # Fault injection for the handshake: the robot acts on a request at once
        # but acknowledges it late, or does not hear requests at all.
        self.ack_delay_s = 0.0
        self.deaf = False
        self.restarts = 0
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._bulk: list[ua.NodeId] = []
        self._published: dict[str, Any] = {}
        self._inputs: dict[str, Any] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cert: Path | None = o.certificate
        self._key: Path | None = o.private_key
        self._trusted: set[str] = set()
        self.security = o.security
        self._users = _Users(dict(o.users))
        self._tg: TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._vtypes = tag_types(o)
        self._robot_node: Any = None
        self.heartbeats: deque[Any] = deque(maxlen=1000)  # each new heartbeat value seen
        self._up = asyncio.Event()
        self._bulk_value = 0.0
        self.bulk_writes = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.options.host}:{self.port}/cellctl/robot"

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Self:
        quiet_asyncua()
        o = self.options
        if self.port == 0:
            self.port = free_port(o.host)
        if o.trusted_clients:
            self._trusted = trusted_fingerprints(list(o.trusted_clients))
        await self._start_server()
        self._tg = TaskGroup()
        await self._tg.__aenter__()
        self._tasks.append(self._tg.create_task(self._tick_loop(), name="robot-sim-tick"))
        if self._bulk:
            self._tasks.append(self._tg.create_task(self._bulk_loop(), name="robot-sim-bulk"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tg is not None:
            with contextlib.suppress(Exception):
                await self._tg.__aexit__(None, None, None)
            self._tg = None
        self._tasks.clear()
        await self._stop_server()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def restart(self, downtime_s: float = 0.5) -> None:
        """Fault injection: the OPC UA server goes away and comes back; the arm goes on.

        Every session and subscription dies with the old listener; the address
        space is kept (building it again costs seconds on a small PC)."""
        await self.stop_server()
        await asyncio.sleep(downtime_s)
        await self.start_server()
        self.restarts += 1

    async def stop_server(self) -> None:
        """Fault injection: the server goes away until `start_server()`."""
        self._up.clear()
        if self._server is not None:
            self._paused_server, self._server = self._server, None
            await self._paused_server.stop()

    async def start_server(self) -> None:
        server = self._paused_server
        if server is None:
            return
        self._paused_server = None
        self._server = server
        # The robot's state is in the address space before the first client comes.
        self._published = {}
        await self._publish()
        await self._secure(server)
        await server.start()
        self._up.set()

    _paused_server: Server | None = None

    async def inject_bad_status(self, tag: str, status: int = StatusCodes.BadSensorFailure) -> None:
        """Publish `status` on a tag until the robot next changes its value."""
        if self._server is None:
            return
        dv = ua.DataValue(StatusCode=ua.StatusCode(ua.UInt32(status)), SourceTimestamp=_now())
        await self._server.write_attribute_value(self._nodes[tag], dv)
        # Kept as published: the bad status stays until the robot changes the value.

    # --- the server ---------------------------------------------------------

    async def _start_server(self) -> None:
        o = self.options
        server = Server(user_manager=self._users)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("cellctl simulated robot")
        await server.set_application_uri(SIM_APP_URI)
        server.set_certificate_validator(self._validate_client)
        idx = await server.register_namespace(o.namespace_uri)
        objects = server.nodes.objects
        robot = self._robot_node = await objects.add_object(_nid("Robot", idx), "Robot")
        self._nodes = {}
        for name in _TAGS:
            await self._add_tag(name, idx)
        await self._add_start_method(idx)
        for mname, fn in (
            ("Pause", self.robot.pause),
            ("Resume", self.robot.resume),
            ("Stop", self.robot.stop),
            ("EmergencyStop", self.robot.emergency_stop),
            ("Reset", self.robot.reset),
        ):
            await robot.add_method(_nid(f"Robot.{mname}", idx), mname, self._m_plain(fn), [], [])
        self._bulk = []
        if o.bulk_tags:
            bulk = await objects.add_object(_nid("Bulk", idx), "Bulk")
            for i in range(o.bulk_tags):
                var = await bulk.add_variable(_nid(f"Bulk.B{i:04d}", idx), f"B{i:04d}", 0.0)
                self._bulk.append(var.nodeid)
        server.subscribe_server_callback(CallbackType.PreRead, self._slow_cb)
        server.subscribe_server_callback(CallbackType.PreWrite, self._slow_cb)
        self._paused_server = server
        await self.start_server()

    async def _add_tag(self, name: str, idx: int) -> None:
        _, initial, writable = _TAGS[name]
        vtype = self._vtypes[name]
        if writable:  # a controller keeps its inputs when only its server restarts
            initial = self._inputs.get(name, initial)
        var = await self._robot_node.add_variable(
            _nid(f"Robot.{name}", idx), name, ua.Variant(_initial(vtype, initial), vtype)
        )
        if writable:
            await var.set_writable()
        self._nodes[name] = var.nodeid

    def _start_argument(self) -> ua.Argument:
        arg = ua.Argument()
        arg.Name = "Program"
        arg.DataType = ua.NodeId(ua.Int32(self._vtypes["ProgramNumber"].value), ua.Int16(0))
        arg.ValueRank = -1
        return arg

    async def _add_start_method(self, idx: int) -> None:
        await self._robot_node.add_method(
            _nid("Robot.StartProgram", idx),
            "StartProgram",
            self._m_start,
            [self._start_argument()],
            [_V.Int32],
        )

    async def retype(
        self,
        *,
        heartbeat_type: str | None = None,
        program_number_type: str | None = None,
        float_type: str | None = None,
    ) -> None:
        """Give the typed nodes other DataTypes, as another controller would (tests share
        one server across types: building one takes seconds). Connect clients after."""
        update = {
            k: v
            for k, v in (
                ("heartbeat_type", heartbeat_type),
                ("program_number_type", program_number_type),
                ("float_type", float_type),
            )
            if v is not None
        }
        self.options = RobotSimOptions.model_validate({**self.options.model_dump(), **update})
        new = tag_types(self.options)
        changed = [n for n, vt in new.items() if vt != self._vtypes[n]]
        method_changed = new["ProgramNumber"] != self._vtypes["ProgramNumber"]
        self._vtypes = new
        server = self._server or self._paused_server
        assert server is not None
        for name in changed:
            # In place (deleting a monitored node trips asyncua): the DataType, then a
            # null value, which lets the first value of the new type in.
            vtype, node = new[name], self._nodes[name]
            datatype = ua.NodeId(ua.Int32(vtype.value), ua.Int16(0))
            await server.write_attribute_value(
                node, ua.DataValue(ua.Variant(datatype, _V.NodeId)), AttributeIds.DataType
            )
            await server.write_attribute_value(
                node,
                ua.DataValue(
                    StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
                ),
            )
            self._inputs.pop(name, None)  # the old value may not fit the new type
            value = _initial(vtype, _TAGS[name][1])
            await server.write_attribute_value(node, ua.DataValue(ua.Variant(value, vtype)))
            self._published.pop(name, None)
        if method_changed:
            method = server.get_node(
                _nid("Robot.StartProgram", self._robot_node.nodeid.NamespaceIndex)
            )
            prop = await method.get_child("0:InputArguments")
            await prop.write_value(ua.Variant([self._start_argument()], _V.ExtensionObject))

    async def _secure(self, server: Server) -> None:
        """Apply the current security settings; they take effect at each listener start."""
        if self.security == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            policy = (
                ua.SecurityPolicyType.Basic256Sha256_Sign
                if self.security == "sign"
                else ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
            )
            server.set_security_policy([policy])
            if self._cert is None or self._key is None:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="cellctl-opcua-sim-")
                pair = make_certificate(
                    Path(self._tmp.name), "robot-server", SIM_APP_URI, server=True
                )
                self._cert, self._key = pair.certificate, pair.private_key
            await server.load_certificate(str(self._cert))
            await server.load_private_key(str(self._key))
        if self._users.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        # asyncua adds endpoints and policies at every start: begin from none.
        server._policies = []
        server.iserver.endpoints = []

    async def set_security(
        self,
        security: Literal["none", "sign", "sign_and_encrypt"],
        *,
        certificate: Path | None = None,
        private_key: Path | None = None,
        trusted_clients: tuple[Path, ...] = (),
        users: dict[str, str] | None = None,
    ) -> None:
        """Change security, trusted clients and users; the listener restarts to apply them
        (the address space is kept: building it again costs seconds)."""
        up = self._server is not None
        await self.stop_server()
        self.security = security
        self._cert, self._key = certificate, private_key
        self._trusted = trusted_fingerprints(list(trusted_clients)) if trusted_clients else set()
        self._users.users = dict(users or {})
        if up:
            await self.start_server()

    async def _stop_server(self) -> None:
        server, self._server = self._server or self._paused_server, None
        self._paused_server = None
        self._up.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.stop()

    async def _validate_client(self, cert: Any, app: ua.ApplicationDescription) -> None:
        if self._trusted and fingerprint(cert) not in self._trusted:
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    async def _slow_cb(self, event: Any, dispatcher: Any) -> None:
        if self.slow_s > 0:
            await asyncio.sleep(self.slow_s)

    async def _m_start(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        if self.slow_s > 0:
            await asyncio.sleep(self.slow_s)
        if self.fail_start_status:
            return ua.StatusCode(getattr(StatusCodes, self.fail_start_status))
        # As node-opcua does (asyncua's server checks nothing): the declared argument
        # type only. Part 4 §5.11.2: BadInvalidArgument, the argument's BadTypeMismatch.
        if len(args) != 1:
            code = StatusCodes.BadArgumentsMissing if not args else StatusCodes.BadTooManyArguments
            return ua.StatusCode(ua.UInt32(code))
        program = args[0]
        if program.VariantType != self._vtypes["ProgramNumber"]:
            result = ua.CallMethodResult()
            result.StatusCode = ua.StatusCode(ua.UInt32(StatusCodes.BadInvalidArgument))
            result.InputArgumentResults = [ua.StatusCode(ua.UInt32(StatusCodes.BadTypeMismatch))]
            return result
        number = program.Value
        code = self.robot.start(int(number), "method")
        await self._publish()
        return [ua.Variant(int(code), ua.VariantType.Int32)]

    def _m_plain(self, fn: Callable[[], None]) -> Callable[..., Any]:
        async def method(parent: ua.NodeId) -> list[ua.Variant]:
            if self.slow_s > 0:
                await asyncio.sleep(self.slow_s)
            fn()
            await self._publish()
            return []

        return method

    # --- the robot's scan cycle ----------------------------------------------

    def _read(self, name: str) -> Any:
        assert self._server is not None
        dv = self._server.iserver.aspace.read_attribute_value(self._nodes[name], AttributeIds.Value)
        return None if dv.Value is None else dv.Value.Value

    async def _write(self, name: str, value: Any) -> None:
        assert self._server is not None
        vtype = self._vtypes[name]
        now = _now()
        dv = _SharedValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now)
        await self._server.write_attribute_value(self._nodes[name], dv)

    async def _scan_inputs(self, now: float) -> None:
        r = self.robot
        if self._read("EStopRequest"):
            r.emergency_stop()
            await self._write("EStopRequest", False)
        for name, fn in (
            ("PauseRequest", r.pause),
            ("ResumeRequest", r.resume),
            ("StopRequest", r.stop),
            ("ResetRequest", r.reset),
        ):
            if self._read(name):
                fn()
                await self._write(name, False)
        for name in ("ProgramNumber", "StartRequest", "Heartbeat", "SpeedOverride"):
            self._inputs[name] = self._read(name)
        beat = self._inputs["Heartbeat"]
        if not self.heartbeats or self.heartbeats[-1] != beat:
            self.heartbeats.append(beat)
        r.heartbeat(int(beat or 0), now)
        request = bool(self._inputs["StartRequest"])
        if request and not self._ack and not self.deaf:
            if self._request_seen_at is None:  # a rising edge: act on it once
                self._request_seen_at = now
                code = r.start(int(self._inputs["ProgramNumber"] or 0), "handshake")
                if code:
                    r.error_code = int(code)
            if now - self._request_seen_at >= self.ack_delay_s:
                self._ack = True
        elif not request:
            self._request_seen_at = None
            self._ack = False

    _ack: bool = False
    _request_seen_at: float | None = None

    async def _publish(self) -> None:
        """Write every output whose value changed since the last scan."""
        if self._server is None:
            return
        r = self.robot
        outputs: dict[str, Any] = {
            "State": r.state.value,
            "StartAck": self._ack,
            "ProgramDone": r.done,
            "ErrorCode": r.error_code,
            "ActiveProgram": r.active_program,
            "RunCounter": r.run_counter,
            "Progress": round(r.progress, 4),
            "CycleTime": r.last_cycle_s,
            "DoorClosed": r.door_closed,
            "ZoneClear": r.zone_clear,
            "WatchdogOk": r.watchdog_ok,
            "Alarm": r.alarm,
        }
        for i, j in enumerate(r.joints, start=1):
            outputs[f"J{i}"] = round(j, 3)
        for name, value in outputs.items():
            if self._published.get(name, _UNSET) != value:
                await self._write(name, value)
                self._published[name] = value

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.options.tick_s)
            now = time.monotonic()
            if self._server is not None:
                await self._scan_inputs(now)
            self.robot.tick(now - last, now)
            last = now
            if self._server is not None:
                await self._publish()

    async def _bulk_loop(self) -> None:
        period = 1.0 / self.options.bulk_rate_hz
        next_at = time.monotonic()
        while True:
            next_at += period
            if next_at < time.monotonic() - period:
                next_at = time.monotonic()  # fell behind: skip, never burst to catch up
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if self._server is None:
                continue
            self._bulk_value += 1.0
            dv = _SharedValue(
                ua.Variant(self._bulk_value, ua.VariantType.Double), SourceTimestamp=_now()
            )
            for node in self._bulk:
                await self._server.write_attribute_value(node, dv)
            self.bulk_writes += 1

    # --- test helpers ----------------------------------------------------------

    def set_door(self, closed: bool) -> None:
        self.robot.set_door(closed)

    def set_zone(self, clear: bool) -> None:
        self.robot.zone_clear = clear

    def reset_robot(self) -> None:
        """Back to a fresh idle robot (tests sharing one server between cases)."""
        r = self.robot
        r.state = RobotState.IDLE
        r.active_program = 0
        r.done = False
        r.error_code = 0
        r.alarm = ""
        r.progress = 0.0
        r.door_closed = r.zone_clear = True
        r.watchdog_ok = True
        r._heartbeat_changed_at = None  # disarmed until a host beats again
        r.starts.clear()
        self.ack_delay_s = 0.0
        self.deaf = False


_UNSET = object()


class _SharedValue(ua.DataValue):
    """A DataValue the server may hand to every monitored item without copying.

    asyncua's server deep-copies each value for each monitored item, which caps a
    1,000-item simulator far below 10 Hz. The simulator never mutates a value after
    writing it (it makes a new one per change), so sharing it is safe."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedValue:
        return self


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


logging.getLogger(__name__).addHandler(logging.NullHandler())
