"""Commands to the cell over MQTT: their schemas, their handlers, their audit trail.

A command is a JSON object published on `<prefix>/<cell>/cmd/<user>/<name>`,
where `<user>` is the broker user that published it: the broker's ACL lets a
client write only under its own name (docs/mqtt.md), so the topic is the
identity; MQTT 5 user properties are kept as free-form notes in the audit.
`cellctl.access` decides, before anything else happens, whether that user
may send that command.

Every command gets exactly one reply, under `<prefix>/<cell>/replies/<user>/`:
to the MQTT 5 response topic with its correlation data when the topic lies
there, else on `replies/<user>/<name>` (MQTT 3.1.1; then the optional `"id"`
field is the correlation). A response topic anywhere else is refused (the
refusal goes to `replies/<user>/<name>`): the cell lends nobody its own write
rights. The reply says `accepted` only after the store committed what the
command changed (and its audit row), or `rejected` with a reason: no
permission, malformed JSON, unknown fields, an unknown device or job, a state
that does not allow it. A rejection is one log line; nothing a client sends
can crash the daemon.

Emergency stop is the one command that acts before it commits: it calls every
connected driver's `emergency_stop()` at once, from its own task, so that no
other command and no fsync stands between its arrival and the devices.
With the disk full, emergency stop, pause, resume, stop and reset still act
and reply `accepted`; the audit row they could not write is logged instead.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cellctl import maintenance
from cellctl.access import COMMAND_NAMES, Access
from cellctl.errors import CellError, NotSupported
from cellctl.model import DeviceState, RequestKind
from cellctl.store import Store, StoreError, transaction
from cellctl.supervisor import DeviceRunner
from cellctl.tasks import TaskGroup
from cellctl.telemetry.encoding import PAYLOAD_VERSION, AuditRecord, Kind, Outgoing, dumps
from cellctl.telemetry.link import Incoming
from cellctl.telemetry.topics import CommandTopic, Topics

log = structlog.get_logger("cellctl.commands")

DEVICE_TIMEOUT_S = 10.0
AUDIT_PAYLOAD_MAX = 4096
Name = Annotated[str, Field(min_length=1, max_length=128)]


class Rejected(CellError):
    """A command that cannot be carried out; the message is the reply's reason."""


# --- schemas ---------------------------------------------------------------


class Command(BaseModel):
    """Fields every command has. Unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    # Echoed in the reply: the correlation on MQTT 3.1.1.
    id: Annotated[str, Field(max_length=128)] | None = None


class DeviceCommand(Command):
    device: Name


class Pause(DeviceCommand):
    """Pause the running step (PackML Hold / Suspend, as the device does it)."""


class Resume(DeviceCommand):
    """Resume a paused step."""


class Stop(DeviceCommand):
    """Controlled stop of the running step."""


class Reset(DeviceCommand):
    """Leave Stopped/Aborted after an emergency stop or alarm."""


class EmergencyStop(Command):
    """Fast controlled stop of every device. Not a safety function."""

    reason: Annotated[str, Field(max_length=500)] = ""


class OutOfService(DeviceCommand):
    """The scheduler gives the device no more work until it is back in service."""

    reason: Annotated[str, Field(max_length=500)] = ""


class IntoService(DeviceCommand):
    """Back into service."""


class StepSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    process: Name
    # At most one of: G-code text, a stored program (sha256:<hex>), a robot program,
    # a PLC recipe.
    gcode: Annotated[str, Field(max_length=50_000_000)] | None = None
    file: Name | None = None
    program: Name | None = None
    recipe: Name | None = None
    # The program's file name for `gcode` (kept with the step, as a job file names it).
    name: Name | None = None
    parameters: dict[str, bool | int | float | str] = Field(default_factory=dict)
    setup: dict[str, str] = Field(default_factory=dict)
    reserves: Annotated[list[Name], Field(max_length=16)] = Field(default_factory=list)
    device: Name | None = None
    estimated_s: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_program(self) -> StepSpec:
        kinds = ("gcode", "file", "program", "recipe")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"a step has at most one of {', '.join(kinds)}; got {given}")
        if self.name is not None:
            if self.gcode is None:
                raise ValueError("name goes with gcode")
            if self.name.startswith("sha256:"):
                raise ValueError("name must not look like a stored program (sha256:…)")
        return self


class Submit(Command):
    """Submit a job. Submitting a job id twice returns the existing job, unless `repeat`
    says otherwise: "ended" makes a new job `<job>-r<n>` once that job has ended,
    "always" makes one every time (a reprint)."""

    job: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=1000)]
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1
    due: datetime | None = None
    repeat: Literal["same", "ended", "always"] = "same"


class Cancel(Command):
    job: Name
    reason: Annotated[str, Field(max_length=500)] = ""


class Reprint(Command):
    """Run a job again, in any state: a new job `<first id>-r<n>` with its programs."""

    job: Name


class Answer(DeviceCommand):
    """Answer an operator request: material loaded, bed cleared, tool changed …"""

    kind: RequestKind
    step: Name | None = None
    note: Annotated[str, Field(max_length=500)] = ""


class SetSetup(DeviceCommand):
    """Tell the cell what is now loaded on a device (material, nozzle, tool …)."""

    setup: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]]
    # True: change only the keys given; false: `setup` replaces what was recorded.
    merge: bool = False


class ResumeFrom(Command):
    """Resume a held step from a chosen G-code line."""

    job: Name
    step: Annotated[int, Field(ge=0)]
    line: Annotated[int, Field(ge=0)]


class AnswerHold(Command):
    """Answer a held step: retry it, resume it from a line, fail it, or confirm it done.

    `attempt` (the step's attempt shown with the hold) makes a stale answer a
    rejection instead of answering a newer hold of the same step."""

    job: Name
    step: Annotated[int, Field(ge=0)]
    action: Literal["retry", "resume", "fail", "done"]
    line: Annotated[int, Field(ge=1)] | None = None
    attempt: Annotated[int, Field(ge=0)] | None = None


class ListJobs(Command):
    """The job queue, for `cellctl jobs` and `cellctl status`; with `job`, that one job
    and its transitions."""

    job: Name | None = None


class ListDevices(Command):
    """Every device: driver, state, busy or not, in service, what is loaded, its step."""


class Maintain(DeviceCommand):
    """Privileged lines (EEPROM, steps/mm, GRBL `$` settings …) sent to an idle device and
    audited; never part of a job (cellctl/maintenance.py). `reason` is recorded with them."""

    lines: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=maintenance.MAX_LINE)]],
        Field(min_length=1, max_length=maintenance.MAX_LINES),
    ]
    reason: Annotated[str, Field(min_length=1, max_length=500)]

    @field_validator("lines")
    @classmethod
    def _printable(cls, v: list[str]) -> list[str]:
        for i, line in enumerate(v, 1):
            if not line.isascii() or not line.isprintable() or not line.strip():
                raise ValueError(f"line {i}: one printable ASCII line, no newline or control bytes")
        return v


COMMANDS: dict[str, type[Command]] = {
    "pause": Pause,
    "resume": Resume,
    "stop": Stop,
    "reset": Reset,
    "estop": EmergencyStop,
    "out_of_service": OutOfService,
    "into_service": IntoService,
    "submit": Submit,
    "cancel": Cancel,
    "reprint": Reprint,
    "answer": Answer,
    "set_setup": SetSetup,
    "resume_from": ResumeFrom,
    "answer_hold": AnswerHold,
    "jobs": ListJobs,
    "maintain": Maintain,
    "devices": ListDevices,
}
assert set(COMMANDS) == COMMAND_NAMES, "cellctl.access.COMMAND_NAMES is out of date"


# --- the job service this layer needs -----------------------------------------


class JobService(Protocol):
    """What the command layer needs from the job service.

    Each method returns only after the store committed the change, and raises a
    CellError whose message is a reason fit for an operator (unknown job, …).
    """

    async def submit(self, cmd: Submit) -> Mapping[str, Any]: ...
    async def cancel(self, job_id: str, reason: str) -> Mapping[str, Any]: ...
    async def reprint(self, job_id: str) -> Mapping[str, Any]: ...
    async def answer(self, cmd: Answer) -> Mapping[str, Any]: ...
    async def set_setup(
        self, device_id: str, setup: Mapping[str, str], merge: bool
    ) -> Mapping[str, Any]: ...
    async def resume_from(self, job_id: str, step: int, line: int) -> Mapping[str, Any]: ...
    async def answer_hold(self, cmd: AnswerHold) -> Mapping[str, Any]: ...
    async def list_jobs(self, job_id: str | None) -> list[Mapping[str, Any]]: ...


class NoJobService:
    """Stands in until a job service is wired: every job command is rejected, honestly."""

    REASON = "the job service is not available in this build yet"

    async def submit(self, cmd: Submit) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def cancel(self, job_id: str, reason: str) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def reprint(self, job_id: str) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def answer(self, cmd: Answer) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def set_setup(
        self, device_id: str, setup: Mapping[str, str], merge: bool
    ) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def resume_from(self, job_id: str, step: int, line: int) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def answer_hold(self, cmd: AnswerHold) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def list_jobs(self, job_id: str | None) -> list[Mapping[str, Any]]:
        raise NotSupported(self.REASON)


# --- handling ----------------------------------------------------------------

PAUSABLE = frozenset({DeviceState.EXECUTE})
RESUMABLE = frozenset({DeviceState.HELD, DeviceState.SUSPENDED})
STOPPABLE = frozenset(
    {
        DeviceState.STARTING,
        DeviceState.EXECUTE,
        DeviceState.HOLDING,
        DeviceState.HELD,
        DeviceState.UNHOLDING,
        DeviceState.SUSPENDING,
        DeviceState.SUSPENDED,
        DeviceState.UNSUSPENDING,
        DeviceState.COMPLETING,
    }
)
RESETTABLE = frozenset({DeviceState.STOPPED, DeviceState.ABORTED, DeviceState.COMPLETE})


def _reject_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "invalid command: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class CommandHandler:
    """Turns incoming command messages into actions, audit rows and replies."""

    def __init__(
        self,
        topics: Topics,
        store: Store,
        runners: Callable[[], Mapping[str, DeviceRunner]],
        publish: Callable[[Outgoing, bytes | None], None],
        audit: Callable[[AuditRecord], None],
        jobs: JobService | None = None,
        device_timeout_s: float = DEVICE_TIMEOUT_S,
        access: Access | None = None,
        legacy: bool = False,
    ) -> None:
        self.topics = topics
        self.access = access or Access.from_section(None)
        # v1 topics are taken too; their replies (cmd/<name>/reply) come back on cmd/+/+.
        self.legacy = legacy
        # Set once the broker's handling of anonymous clients is known (MqttService):
        # until then commands wait, so none is judged by a policy that may not hold.
        self.access_known = asyncio.Event()
        self.access_known.set()
        self.store = store
        self.runners = runners
        self.publish = publish
        self.audit = audit
        self.jobs: JobService = jobs or NoJobService()
        self.device_timeout_s = device_timeout_s
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._estops: asyncio.Queue[Incoming] = asyncio.Queue()
        self.handled = 0
        self.out_of_service: set[str] = set()
        # Emergency stop timing: command arrival → last device's emergency_stop() returned.
        self.last_estop_s: float | None = None

    async def load(self) -> None:
        def read(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute("SELECT device_id FROM device_service WHERE in_service = 0")
            return {r[0] for r in rows}

        self.out_of_service = await self.store.call(read)

    def on_message(self, msg: Incoming) -> None:
        """Called by the link on the event loop; never waits."""
        route = self.topics.parse_command(msg.topic)
        if self.legacy and route is not None and not route.legacy and route.name == "reply":
            return  # a v1 reply (ours), not a command
        if route is not None and route.name == "estop":
            self._estops.put_nowait(msg)
        else:
            self._queue.put_nowait(msg)

    async def run(self) -> None:
        async with TaskGroup() as tg:
            tg.create_task(self._worker(self._queue), name="commands")
            tg.create_task(self._worker(self._estops), name="estop")

    async def _worker(self, queue: asyncio.Queue[Incoming]) -> None:
        while True:
            msg = await queue.get()
            route = self.topics.parse_command(msg.topic)
            # What everyone may do does not depend on who is asking: an estop never waits.
            if route is None or route.name not in self.access.everyone:
                await self.access_known.wait()
            await self.handle(msg)

    async def handle(self, msg: Incoming) -> None:
        route = self.topics.parse_command(msg.topic) or CommandTopic("", msg.topic)
        name = route.name
        request_id: str | None = None
        result: Mapping[str, Any] | list[Mapping[str, Any]] | None = None
        payload_text = msg.payload[:AUDIT_PAYLOAD_MAX]
        data, malformed = self._try_parse(msg.payload)
        rid = data.get("id")
        request_id = rid if isinstance(rid, str) else None
        reply_topic, misdirected = self._reply_topic(route, msg)
        try:
            if misdirected:
                raise Rejected(misdirected)
            model = COMMANDS.get(name)
            if model is None:
                raise Rejected(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
            self.access.check(route.user, name)  # before anything is touched
            if malformed:
                raise Rejected(malformed)
            try:
                cmd = model.model_validate_json(msg.payload)
            except ValidationError as exc:
                raise Rejected(_reject_validation(exc)) from None
            result = await self._execute(name, cmd, msg)
            outcome, reason = "accepted", ""
        except CellError as exc:
            outcome, reason = "rejected", str(exc) or type(exc).__name__
        except Exception as exc:  # a bug: the daemon survives it and says so
            log.error("command handler raised", command=name, exc_info=exc)
            outcome, reason = "rejected", f"internal error: {type(exc).__name__}"
        origin = self._origin(msg)
        record = AuditRecord(name, request_id, origin, outcome, reason)
        try:
            await self._commit_audit(record, payload_text, name == "estop" or outcome != "accepted")
        except StoreError as exc:
            # Only an emergency stop gets here accepted: it has acted, so the reply
            # says accepted, and the log carries what the audit table could not.
            what = "emergency stop carried out" if outcome == "accepted" else f"{name} {outcome}"
            log.error(f"{what}; its audit row could not be written", command=name, error=str(exc))
        except Exception as exc:
            log.error("audit write failed", command=name, exc_info=exc)
            if outcome == "accepted":
                outcome, reason = "rejected", "the store could not record the command"
                record = AuditRecord(name, request_id, origin, outcome, reason)
        if outcome == "rejected":
            log.warning("command rejected", command=name, reason=reason, origin=origin)
        else:
            log.info("command accepted", command=name, origin=origin)
        self.audit(record)
        self._reply(msg, reply_topic, name, request_id, outcome, reason, result)
        self.handled += 1

    def _reply_topic(self, route: CommandTopic, msg: Incoming) -> tuple[str, str]:
        """Where the reply goes, and why the asked-for response topic is refused ("": it is not).

        Only the user's own reply tree: a response topic elsewhere (another user's replies,
        a device's alarms) would make the cell write there for the sender."""
        if route.user is None:  # legacy: no identity, so no reply tree of its own
            own = default = self.topics.legacy_reply(route.name)
        else:
            own = self.topics.replies(route.user)
            default = self.topics.reply(route.user, route.name)
        asked = msg.response_topic
        if not asked:
            return default, ""
        if asked == own or (asked.startswith(own + "/") and not _wild(asked)):
            return asked, ""
        return default, f"response topic {asked!r} refused: replies go under {own}/"

    @staticmethod
    def _try_parse(payload: bytes) -> tuple[dict[str, Any], str]:
        """The command's JSON object, or {} and why it is not one."""
        try:
            return CommandHandler._parse(payload), ""
        except Rejected as exc:
            return {}, str(exc)

    @staticmethod
    def _parse(payload: bytes) -> dict[str, Any]:
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Rejected(f"malformed JSON: {exc}") from None
        except RecursionError:
            raise Rejected("malformed JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise Rejected(f"expected a JSON object, got {type(data).__name__}")
        return data

    def _origin(self, msg: Incoming) -> dict[str, Any]:
        props = dict(msg.user_properties)
        route = self.topics.parse_command(msg.topic)
        return {
            # The broker-verified user (from the topic); None on a legacy topic.
            "user": route.user if route is not None else None,
            "verified": route is not None
            and route.user is not None
            and self.access.verified
            and not self.access.allow_anonymous,
            "client_id": props.get("client_id"),
            "user_properties": props,
            "response_topic": msg.response_topic,
        }

    async def _commit_audit(self, rec: AuditRecord, payload: bytes, separate: bool) -> None:
        # Accepted commands other than estop committed their own rows with the audit
        # row already (see _execute); this writes the audit row for the rest.
        if not separate:
            return
        await self.store.call(lambda conn: _insert_audit(conn, rec, payload))

    def _reply(
        self,
        msg: Incoming,
        topic: str,
        name: str,
        request_id: str | None,
        outcome: str,
        reason: str,
        result: Any,
    ) -> None:
        body = {
            "v": PAYLOAD_VERSION,
            "ts": time.time(),
            "command": name,
            "id": request_id,
            "outcome": outcome,
            "reason": reason,
            "result": result,
        }
        self.publish(Outgoing(topic, dumps(body), Kind.REPLY, qos=1), msg.correlation)

    # --- the commands --------------------------------------------------------

    async def _execute(
        self, name: str, cmd: Command, msg: Incoming
    ) -> Mapping[str, Any] | list[Mapping[str, Any]] | None:
        if isinstance(cmd, EmergencyStop):
            return await self._estop(cmd, msg)
        if isinstance(cmd, Pause):
            return await self._device_action(name, cmd, msg, PAUSABLE, lambda d: d.pause())
        if isinstance(cmd, Resume):
            return await self._device_action(name, cmd, msg, RESUMABLE, lambda d: d.resume())
        if isinstance(cmd, Stop):
            return await self._device_action(name, cmd, msg, STOPPABLE, lambda d: d.stop())
        if isinstance(cmd, Reset):
            return await self._device_action(name, cmd, msg, RESETTABLE, lambda d: d.reset())
        if isinstance(cmd, OutOfService | IntoService):
            return await self._service(name, cmd, msg)
        if isinstance(cmd, Maintain):
            return await self._maintain(cmd, msg)
        result: Mapping[str, Any] | list[Mapping[str, Any]]
        if isinstance(cmd, Submit):
            self._check_devices(s.device for s in cmd.steps if s.device is not None)
            result = await self.jobs.submit(cmd)
        elif isinstance(cmd, Cancel):
            result = await self.jobs.cancel(cmd.job, cmd.reason)
        elif isinstance(cmd, Reprint):
            result = await self.jobs.reprint(cmd.job)
        elif isinstance(cmd, Answer):
            self._check_devices([cmd.device])
            result = await self.jobs.answer(cmd)
        elif isinstance(cmd, SetSetup):
            self._check_devices([cmd.device])
            result = await self.jobs.set_setup(cmd.device, cmd.setup, cmd.merge)
        elif isinstance(cmd, ResumeFrom):
            result = await self.jobs.resume_from(cmd.job, cmd.step, cmd.line)
        elif isinstance(cmd, AnswerHold):
            result = await self.jobs.answer_hold(cmd)
        elif isinstance(cmd, ListJobs):
            result = await self.jobs.list_jobs(cmd.job)
        elif isinstance(cmd, ListDevices):
            result = await self._devices()
        else:
            raise Rejected(f"command {name!r} has no handler")
        # The job service committed its change; the audit row follows.
        rec = AuditRecord(name, cmd.id, self._origin(msg), "accepted")
        await self.store.call(lambda conn: _insert_audit(conn, rec, msg.payload))
        return result

    def _check_devices(self, ids: Any) -> None:
        runners = self.runners()
        for dev in ids:
            if dev not in runners:
                raise Rejected(f"unknown device {dev!r}")

    def _runner(self, device_id: str) -> DeviceRunner:
        runner = self.runners().get(device_id)
        if runner is None:
            known = ", ".join(sorted(self.runners())) or "none"
            raise Rejected(f"unknown device {device_id!r}; known: {known}")
        return runner

    async def _device_action(
        self,
        name: str,
        cmd: DeviceCommand,
        msg: Incoming,
        allowed: frozenset[DeviceState],
        action: Callable[[Any], Awaitable[None]],
    ) -> Mapping[str, Any]:
        runner = self._runner(cmd.device)
        driver = runner.driver
        if driver is None or runner.state == DeviceState.UNAVAILABLE:
            raise Rejected(f"device {cmd.device!r} is not connected")
        if runner.state not in allowed:
            wanted = ", ".join(sorted(s.label for s in allowed))
            raise Rejected(f"device {cmd.device!r} is {runner.state.label}; {name} needs {wanted}")
        try:
            async with asyncio.timeout(self.device_timeout_s):
                await action(driver)
        except TimeoutError:
            raise Rejected(f"device {cmd.device!r} did not carry out {name} in time") from None
        rec = AuditRecord(name, cmd.id, self._origin(msg), "accepted")
        try:
            await self.store.call(lambda conn: _insert_audit(conn, rec, msg.payload))
        except StoreError as exc:  # it acted: the reply says so, the log says the rest
            log.error(
                f"{name} carried out; its audit row could not be written",
                device=cmd.device,
                error=str(exc),
            )
        return {"device": cmd.device, "state": runner.state.label}

    async def _service(
        self, name: str, cmd: OutOfService | IntoService, msg: Incoming
    ) -> Mapping[str, Any]:
        self._runner(cmd.device)
        in_service = isinstance(cmd, IntoService)
        reason = cmd.reason if isinstance(cmd, OutOfService) else ""
        rec = AuditRecord(name, cmd.id, self._origin(msg), "accepted")

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO device_service (device_id, in_service, reason, ts)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET"
                    " in_service = excluded.in_service, reason = excluded.reason, ts = excluded.ts",
                    (cmd.device, int(in_service), reason, time.time()),
                )
                _insert_audit(conn, rec, msg.payload, in_transaction=True)

        await self.store.call(write)
        set_in_service = getattr(self.jobs, "set_in_service", None)
        if set_in_service is not None:  # the scheduler's own record of it
            await set_in_service(cmd.device, in_service, reason)
        if in_service:
            self.out_of_service.discard(cmd.device)
        else:
            self.out_of_service.add(cmd.device)
        return {"device": cmd.device, "in_service": in_service}

    async def _estop(self, cmd: EmergencyStop, msg: Incoming) -> Mapping[str, Any]:
        loop = asyncio.get_running_loop()
        targets = {dev_id: r.driver for dev_id, r in self.runners().items() if r.driver is not None}
        skipped = sorted(set(self.runners()) - set(targets))
        failed: dict[str, str] = {}

        async def one(dev_id: str, driver: Any) -> None:
            try:
                async with asyncio.timeout(self.device_timeout_s):
                    await driver.emergency_stop()
            except Exception as exc:  # every device gets its stop, whatever one of them does
                failed[dev_id] = f"{type(exc).__name__}: {exc}"

        async with TaskGroup() as tg:
            for dev_id, driver in targets.items():
                tg.create_task(one(dev_id, driver), name=f"estop:{dev_id}")
        start = msg.received or loop.time()
        self.last_estop_s = loop.time() - start
        log.warning(
            "emergency stop",
            devices=len(targets),
            failed=failed,
            not_connected=skipped,
            ms=round(self.last_estop_s * 1000, 2),
        )
        return {
            "stopped": sorted(set(targets) - set(failed)),
            "failed": failed,
            "not_connected": skipped,
            "elapsed_ms": round(self.last_estop_s * 1000, 3),
        }

    async def _devices(self) -> list[Mapping[str, Any]]:
        listed = getattr(self.jobs, "list_devices", None)
        jobs_view: Mapping[str, Mapping[str, Any]] = await listed() if listed else {}
        out: list[Mapping[str, Any]] = []
        for dev_id, runner in sorted(self.runners().items()):
            view = jobs_view.get(dev_id, {})
            out.append(
                {
                    "id": dev_id,
                    "driver": runner.config.driver,
                    "state": runner.state.label,
                    "connected": runner.driver is not None,
                    "busy": runner.busy,
                    "in_service": dev_id not in self.out_of_service,
                    "setup": view.get("setup", {}),
                    "step": view.get("busy_with"),
                    "note": view.get("note", ""),
                    "last_failure": runner.last_failure,
                }
            )
        return out

    async def _maintain(self, cmd: Maintain, msg: Incoming) -> Mapping[str, Any]:
        # A refusal (CellError) gets its audit row from handle(), like every rejection.
        result = await maintenance.carry_out(self._runner(cmd.device), cmd.device, cmd.lines)
        answers = "; ".join(f"{x['line']} -> {x['answer']}" for x in result["lines"])
        rec = AuditRecord("maintain", cmd.id, self._origin(msg), "accepted", answers[:500])
        try:
            await self.store.call(lambda conn: _insert_audit(conn, rec, msg.payload))
        except StoreError as exc:  # the lines ran: the reply says so, the log the rest
            log.error("maintenance lines sent; audit row not written", error=str(exc))
        log.warning(
            "maintenance lines sent",
            device=cmd.device,
            user=rec.origin.get("user"),
            reason=cmd.reason,
            lines=list(cmd.lines),
        )
        return result


def _wild(topic: str) -> bool:
    return "+" in topic or "#" in topic


def _insert_audit(
    conn: sqlite3.Connection, rec: AuditRecord, payload: bytes, in_transaction: bool = False
) -> None:
    row = (
        rec.timestamp,
        rec.command,
        rec.request_id,
        json.dumps(rec.origin),
        payload[:AUDIT_PAYLOAD_MAX],
        rec.outcome,
        rec.reason,
    )
    sql = (
        "INSERT INTO command_audit (ts, command, request_id, origin, payload, outcome, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    if in_transaction:
        conn.execute(sql, row)
        return
    with transaction(conn):
        conn.execute(sql, row)
