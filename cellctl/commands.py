"""Commands to the cell over MQTT: their handlers and their audit trail (their payload
models are in `cellctl.command_payloads`).

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
import binascii
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import structlog
from pydantic import (
    Field,
    ValidationError,
)

from cellctl import maintenance, memtrim, program_list
from cellctl.access import FRONTEND, Access, AccessDenied
from cellctl.command_ids import CommandIds
from cellctl.command_limits import BoundedLane, CommandsSection, Lane, RateLimiter, lane_of
from cellctl.command_payloads import (
    COMMANDS,
    READ_ONLY,
    Answer,
    AnswerHold,
    Cancel,
    Command,
    DeviceCommand,
    EmergencyStop,
    IntoService,
    ListDevices,
    ListJobs,
    ListPrograms,
    Maintain,
    OutOfService,
    Pause,
    PutProgram,
    Rejected,
    Reprint,
    Reset,
    Resume,
    ResumeFrom,
    SetPriority,
    SetSetup,
    Stop,
    Submit,
)
from cellctl.errors import CellError, NotSupported
from cellctl.model import DeviceState
from cellctl.store import Store, StoreError, transaction
from cellctl.supervisor import DeviceRunner
from cellctl.tasks import TaskGroup
from cellctl.telemetry.encoding import PAYLOAD_VERSION, AuditRecord, Kind, Outgoing, dumps
from cellctl.telemetry.link import Incoming
from cellctl.telemetry.topics import CommandTopic, Topics
from cellctl.uploads import ProgramUploads

log = structlog.get_logger("cellctl.commands")

# Lanes the others give way to (see CommandHandler._worker).
URGENT = frozenset({Lane.ESTOP, Lane.CONTROL})

DEVICE_TIMEOUT_S = 10.0
# Emergency stops handled at once (each acts on every device, then writes its audit row).
ESTOPS_IN_HAND = 4
# The heap is trimmed once the lanes stayed empty for TRIM_DELAY_S after this many
# payload bytes arrived (two of the largest submits).
TRIM_AFTER_BYTES = 8 << 20
TRIM_DELAY_S = 1.0
AUDIT_PAYLOAD_MAX = 4096
Name = Annotated[str, Field(min_length=1, max_length=128)]


# --- the job service this layer needs -----------------------------------------


class JobService(Protocol):
    """What the command layer needs from the job service.

    Each method returns only after the store committed the change, and raises a
    CellError whose message is a reason fit for an operator (unknown job, …).
    """

    async def submit(self, cmd: Submit) -> Mapping[str, Any]: ...
    async def cancel(self, job_id: str, reason: str) -> Mapping[str, Any]: ...
    async def reprint(self, job_id: str) -> Mapping[str, Any]: ...
    async def set_priority(self, job_id: str, priority: int) -> Mapping[str, Any]: ...
    async def answer(self, cmd: Answer) -> Mapping[str, Any]: ...
    async def set_setup(
        self, device_id: str, setup: Mapping[str, str], merge: bool
    ) -> Mapping[str, Any]: ...
    async def resume_from(self, job_id: str, step: int, line: int) -> Mapping[str, Any]: ...
    async def answer_hold(self, cmd: AnswerHold) -> Mapping[str, Any]: ...
    async def list_jobs(
        self, job_id: str | None, limit: int | None = None, after: int | None = None
    ) -> list[Mapping[str, Any]]: ...


class NoJobService:
    """Stands in until a job service is wired: every job command is rejected, honestly."""

    REASON = "the job service is not available in this build yet"

    async def submit(self, cmd: Submit) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def cancel(self, job_id: str, reason: str) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def reprint(self, job_id: str) -> Mapping[str, Any]:
        raise NotSupported(self.REASON)

    async def set_priority(self, job_id: str, priority: int) -> Mapping[str, Any]:
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

    async def list_jobs(
        self, job_id: str | None, limit: int | None = None, after: int | None = None
    ) -> list[Mapping[str, Any]]:
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
        limits: CommandsSection | None = None,
        uploads: ProgramUploads | None = None,
        reply_via: Callable[[Outgoing, bytes | None, str], None] | None = None,
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
        # Given: replies go out by it, told which connection delivered the command.
        self.reply_via = reply_via
        self.audit = audit
        self.jobs: JobService = jobs or NoJobService()
        self.device_timeout_s = device_timeout_s
        self.limits = limits or CommandsSection()
        self.uploads = uploads
        self.ids = CommandIds(store, self.limits.id_retention_s)
        self.rate = RateLimiter(self.limits.rate_per_s, self.limits.rate_burst)
        self.lanes: dict[Lane, BoundedLane[Incoming]] = {
            lane: BoundedLane(self.limits.bound(lane)) for lane in Lane
        }
        self._wake = {lane: asyncio.Event() for lane in Lane}
        self._urgent_idle = asyncio.Event()
        self._urgent_idle.set()
        # Told True when an estop, stop or pause arrives with none in hand, False once
        # none is left (the MQTT service pauses reading the main connection meanwhile).
        self.on_urgent: Callable[[bool], None] | None = None
        self._urgent_in_hand = 0
        self._estop_acting = asyncio.Lock()
        # Payload bytes queued since the heap was last trimmed (cellctl.memtrim).
        self._untrimmed = 0
        self._trim = asyncio.Event()
        self.trims = 0
        # Refused at the door (too large, over the rate, lane full): no parse, no queue.
        self.refused = 0
        self._refusals_logged: dict[tuple[str | None, str], tuple[float, int]] = {}
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
        """Called by the link on the event loop; never waits, never parses: a message is
        refused here (too large, over its user's rate, its lane full) or queued."""
        route = self.topics.parse_command(msg.topic)
        if self.legacy and route is not None and not route.legacy and route.name == "reply":
            return  # a v1 reply (ours), not a command
        name = route.name if route is not None else ""
        lane = lane_of(name)
        size = len(msg.payload)
        self._untrimmed += size  # refused or not, paho allocated it
        cap = self.limits.payload_max_bytes
        if size > cap:
            self._refuse(
                msg,
                f"payload of {size} bytes is larger than the {cap} allowed ([commands] "
                "payload_max_bytes); send a large program in chunks with put_program",
            )
            return
        user = route.user if route is not None and route.user is not None else ""
        # A front end's commands count for the user it acts for, known only once the
        # payload is parsed and the front end checked: handle() counts those.
        if lane is not Lane.ESTOP and not self._fronts(user):
            over = self._over_rate(user)
            if over:
                self._refuse(msg, over)
                return
        if not self.lanes[lane].offer(msg, size):
            q = self.lanes[lane]
            self._refuse(
                msg,
                f"busy: the {lane.value} queue is full ({len(q)} commands, {q.held_bytes} "
                "bytes waiting); try again later",
            )
            return
        self._wake[lane].set()
        if lane in URGENT:
            if self._urgent_idle.is_set():
                self._urgent_idle.clear()
                if self.on_urgent is not None:
                    self.on_urgent(True)

    def _fronts(self, user: str) -> bool:
        """A verified user with the `frontend` permission (cellctl.access)."""
        return bool(user) and self.access.verified and self.access.allowed(user, FRONTEND)

    def _over_rate(self, user: str) -> str:
        """Empty if `user` may send one more command now, else the refusal's reason."""
        wait_s = self.rate.take(user, asyncio.get_running_loop().time())
        if wait_s <= 0:
            return ""
        return (
            f"rate limit: user {user!r} may send {self.limits.rate_per_s:g} commands/s "
            f"(bursts of {self.limits.rate_burst}); retry in {wait_s:.2f} s"
        )

    def _refuse(self, msg: Incoming, reason: str) -> None:
        """A reply without parsing the payload: its `id` is not read, MQTT 5 correlation
        data still pairs it with the command."""
        route = self.topics.parse_command(msg.topic) or CommandTopic("", msg.topic)
        topic, _ = self._reply_topic(route, msg)
        self.refused += 1
        # One line per user and kind of refusal a second: a flood must not become a log flood.
        key = (route.user, reason.split(":", 1)[0])
        now = asyncio.get_running_loop().time()
        last, quiet = self._refusals_logged.get(key, (-1e9, 0))
        if now - last >= 1.0:
            log.warning(
                "command refused",
                command=route.name,
                user=route.user,
                reason=reason,
                more_refused_not_logged=quiet,
            )
            if len(self._refusals_logged) > 1000:
                self._refusals_logged.clear()
            self._refusals_logged[key] = (now, 0)
        else:
            self._refusals_logged[key] = (last, quiet + 1)
        self._reply(msg, topic, route.name, None, "rejected", reason, None)

    async def run(self) -> None:
        if self.uploads is not None:
            await asyncio.to_thread(self.uploads.discard_leftovers)
        async with TaskGroup() as tg:
            for lane in Lane:
                tg.create_task(self._worker(lane), name=f"commands-{lane.value}")
            if self.uploads is not None:
                tg.create_task(self._expire_uploads(self.uploads), name="commands-uploads")
            tg.create_task(self._trimmer(), name="commands-trim")

    async def _trimmer(self) -> None:
        """After a burst of large messages, once every lane is empty: the heap trimmed."""
        while True:
            await self._trim.wait()
            self._trim.clear()
            await asyncio.sleep(TRIM_DELAY_S)  # the messages in hand are done and freed
            if any(map(len, self.lanes.values())) or self._trim.is_set():
                continue  # still busy: the next lane to empty asks again
            self._untrimmed = 0
            await asyncio.to_thread(memtrim.trim)
            self.trims += 1

    async def _expire_uploads(self, uploads: ProgramUploads) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.limits.upload_expiry_s / 2))
            uploads.expire()  # on the loop: the uploads worker owns the same state

    async def _worker(self, lane: Lane) -> None:
        queue, wake = self.lanes[lane], self._wake[lane]
        urgent = lane in URGENT
        # Emergency stops overlap: the next one acts while the last one's audit row is
        # still being written (under load that write took 170 ms). Their device calls
        # do not overlap (_estop): a driver is never asked to stop twice at once.
        slots = asyncio.Semaphore(ESTOPS_IN_HAND if lane is Lane.ESTOP else 1)
        async with TaskGroup() as tg:
            while True:
                if not urgent:
                    # Lanes share one event loop: while an emergency stop, stop or pause is
                    # waiting or in hand, no submit or query starts its parse and its work.
                    await self._urgent_idle.wait()
                msg = queue.take()
                if msg is None:
                    if self._untrimmed >= TRIM_AFTER_BYTES:
                        self._trim.set()
                    wake.clear()
                    await wake.wait()
                    continue
                route = self.topics.parse_command(msg.topic)
                # What everyone may do does not depend on who is asking: an estop never waits.
                if route is None or route.name not in self.access.everyone:
                    await self.access_known.wait()
                if urgent:
                    self._urgent_in_hand += 1
                await slots.acquire()
                if lane is Lane.ESTOP:
                    tg.create_task(self._one(msg, urgent, slots), name="commands-estop-one")
                else:
                    await self._one(msg, urgent, slots)

    async def _one(self, msg: Incoming, urgent: bool, slots: asyncio.Semaphore) -> None:
        try:
            await self.handle(msg)
        finally:
            slots.release()
            if urgent:
                self._urgent_in_hand -= 1
                if not self._urgent_in_hand and not any(len(self.lanes[u]) for u in URGENT):
                    self._urgent_idle.set()
                    if self.on_urgent is not None:
                        self.on_urgent(False)

    async def handle(self, msg: Incoming) -> None:
        route = self.topics.parse_command(msg.topic) or CommandTopic("", msg.topic)
        name = route.name
        request_id: str | None = None
        result: Mapping[str, Any] | list[Mapping[str, Any]] | None = None
        payload_text = msg.payload[:AUDIT_PAYLOAD_MAX]
        acting: str | None = None  # the user a front end acts for, once it may
        reply_topic, misdirected = self._reply_topic(route, msg)
        # Set once the command was carried out or refused for what it asked: such a
        # reply answers a replay of its id (cellctl.command_ids).
        keep = False
        page: Mapping[str, Any] | None = None
        try:
            model = COMMANDS.get(name)
            if misdirected or model is None or not self.access.allowed(route.user, name):
                request_id = self._id_of(msg.payload)
            if misdirected:
                raise Rejected(misdirected)
            if model is None:
                raise Rejected(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
            behalf: Any = None
            malformed = ""
            if b"on_behalf_of" in msg.payload:  # only a front end's commands pay this parse
                data, malformed = self._try_parse(msg.payload)
                behalf = data.get("on_behalf_of")
            if behalf is None:
                self.access.check(route.user, name)  # before anything is touched
            elif not isinstance(behalf, str):
                raise Rejected("on_behalf_of: expected a user name (a string)")
            else:
                try:
                    self.access.check_on_behalf(route.user, behalf, name)
                    acting = behalf
                except AccessDenied:
                    # An emergency stop is never refused for a field it need not carry:
                    # a sender that may stop the cell by itself does so in its own name.
                    if name != "estop" or not self.access.allowed(route.user, name):
                        raise
            if malformed:
                raise Rejected(malformed)
            sender = route.user or ""
            if name != "estop" and self._fronts(sender):
                # The door let a front end's command through uncounted: it counts now, for
                # the user it acts for (or for the front end, acting for nobody). Refused
                # like at the door: a reply, no audit row.
                over = self._over_rate(acting or sender)
                if over:
                    self._refuse(msg, over)
                    self.handled += 1
                    return
            try:
                # Parsed once, by the model; the plain parse only explains a failure.
                cmd = model.model_validate_json(msg.payload)
            except ValidationError as exc:
                data, malformed = self._try_parse(msg.payload)
                rid = data.get("id")
                request_id = rid if isinstance(rid, str) else None
                raise Rejected(malformed or _reject_validation(exc)) from None
            request_id = cmd.id
            user = acting or route.user  # a front end's users each have their own ids
            if user is not None and request_id and CommandIds.applies(name, user, request_id):
                kept = await self.ids.find(user, request_id)
                if kept is not None:
                    log.info("command replayed", command=name, user=user, id=request_id)
                    if kept.command != name:
                        kept_reason = (
                            f"id {request_id!r} was already used for {kept.command!r}; "
                            "an id names one command"
                        )
                        self._reply(msg, reply_topic, name, request_id, "rejected", kept_reason)
                    else:
                        self._reply(
                            msg,
                            reply_topic,
                            name,
                            request_id,
                            kept.outcome,
                            kept.reason,
                            kept.result,
                        )
                    self.handled += 1
                    return
                keep = True
            done = await self._execute(name, cmd, msg)
            if isinstance(done, Paged):
                result, page = done.jobs, done.page
            else:
                result = done
            outcome, reason = "accepted", ""
        except StoreError as exc:
            keep = False  # the store failed, not the command: a retry may succeed
            outcome, reason = "rejected", str(exc) or type(exc).__name__
        except CellError as exc:
            outcome, reason = "rejected", str(exc) or type(exc).__name__
        except Exception as exc:  # a bug: the daemon survives it and says so
            keep = False
            log.error("command handler raised", command=name, exc_info=exc)
            outcome, reason = "rejected", f"internal error: {type(exc).__name__}"
        origin = self._origin(msg, acting)
        record = AuditRecord(name, request_id, origin, outcome, reason)
        chunk = name == "put_program" and outcome == "accepted"
        if chunk and not (isinstance(result, Mapping) and result.get("complete")):
            # A chunk of an upload in progress: the completed upload is audited, once.
            self._reply(msg, reply_topic, name, request_id, outcome, reason, result)
            self.handled += 1
            return
        try:
            separate = name in ("estop", "put_program") or outcome != "accepted"
            await self._commit_audit(record, payload_text, separate)
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
        elif name in READ_ONLY:
            # A query changes nothing: no audit row or message, no info line (a refused
            # one is audited above like any refusal).
            log.debug("query answered", command=name, origin=origin)
        else:
            log.info("command accepted", command=name, origin=origin)
        if outcome == "rejected" or name not in READ_ONLY:
            self.audit(record)
        self._reply(msg, reply_topic, name, request_id, outcome, reason, result, page)
        self.handled += 1  # counted with its reply: a reader who saw the reply sees the count
        user = acting or route.user
        if keep and user is not None and request_id:
            try:
                await self.ids.keep(user, request_id, name, outcome, reason, result)
            except StoreError as exc:
                log.error(
                    "the reply to a command id could not be kept", id=request_id, error=str(exc)
                )

    @staticmethod
    def _id_of(payload: bytes) -> str | None:
        data, _ = CommandHandler._try_parse(payload)
        rid = data.get("id")
        return rid if isinstance(rid, str) else None

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

    def _origin(self, msg: Incoming, behalf: str | None = None) -> dict[str, Any]:
        """Who sent it; with `behalf` (checked: the sender has `frontend`), who it was for."""
        props = dict(msg.user_properties)
        route = self.topics.parse_command(msg.topic)
        sender = route.user if route is not None else None
        origin: dict[str, Any] = {
            # The broker-verified user (from the topic); None on a legacy topic.
            "user": sender,
            "verified": route is not None
            and route.user is not None
            and self.access.verified
            and not self.access.allow_anonymous,
            "client_id": props.get("client_id"),
            "user_properties": props,
            "response_topic": msg.response_topic,
        }
        if behalf is not None:  # the user the front end verified; `via` the front end
            origin["user"], origin["via"] = behalf, sender
        return origin

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
        result: Any = None,
        page: Mapping[str, Any] | None = None,
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
        if page is not None:
            body["page"] = page
        out = Outgoing(topic, dumps(body), Kind.REPLY, qos=1)
        if self.reply_via is not None:
            self.reply_via(out, msg.correlation, msg.channel)
        else:
            self.publish(out, msg.correlation)

    # --- the commands --------------------------------------------------------

    async def _execute(
        self, name: str, cmd: Command, msg: Incoming
    ) -> Mapping[str, Any] | list[Mapping[str, Any]] | Paged | None:
        if isinstance(cmd, EmergencyStop):
            return await self._estop(cmd, msg)
        if isinstance(cmd, PutProgram):
            return await self._put_program(cmd, msg)
        if isinstance(cmd, ListJobs):
            return await self._list_jobs(cmd)  # a query: not audited (READ_ONLY)
        if isinstance(cmd, ListDevices):
            return await self._devices()  # a query: not audited (READ_ONLY)
        if isinstance(cmd, ListPrograms):
            return await self._programs(cmd)  # a query: not audited (READ_ONLY)
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
            most = self.limits.quantity_steps_max
            if cmd.quantity * len(cmd.steps) > most:
                raise Rejected(
                    f"quantity × steps = {cmd.quantity} × {len(cmd.steps)} = "
                    f"{cmd.quantity * len(cmd.steps)}, more than the {most} allowed "
                    "([commands] quantity_steps_max)"
                )
            result = await self.jobs.submit(cmd)
        elif isinstance(cmd, Cancel):
            result = await self.jobs.cancel(cmd.job, cmd.reason)
        elif isinstance(cmd, Reprint):
            result = await self.jobs.reprint(cmd.job)
        elif isinstance(cmd, SetPriority):
            result = await self.jobs.set_priority(cmd.job, cmd.priority)
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
        else:
            raise Rejected(f"command {name!r} has no handler")
        # The job service committed its change; the audit row follows.
        rec = AuditRecord(name, cmd.id, self._origin(msg, cmd.on_behalf_of), "accepted")
        await self.store.call(lambda conn: _insert_audit(conn, rec, msg.payload))
        return result

    async def _list_jobs(self, cmd: ListJobs) -> Paged:
        if cmd.job is not None:
            return Paged(await self.jobs.list_jobs(cmd.job), None)
        lim = self.limits
        limit = min(cmd.limit or lim.jobs_page, lim.jobs_page_max)
        jobs = await self.jobs.list_jobs(None, limit + 1, cmd.after)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        last = jobs[-1].get("seq") if jobs else None
        return Paged(jobs, {"limit": limit, "more": more, "after": last if more else None})

    async def _programs(self, cmd: ListPrograms) -> Paged:
        if self.uploads is None:
            raise NotSupported("the program store is not available in this build")
        lim = self.limits
        limit = min(cmd.limit or lim.jobs_page, lim.jobs_page_max)
        stored = await asyncio.to_thread(program_list.scan, self.uploads.programs)
        rest = program_list.after(stored, cmd.after)
        page, more = rest[:limit], len(rest) > limit
        rows = await self.store.call(lambda conn: program_list.describe(conn, page))
        last = program_list.cursor(rows[-1]) if rows and more else None
        return Paged(list(rows), {"limit": limit, "more": more, "after": last})

    async def _put_program(self, cmd: PutProgram, msg: Incoming) -> Mapping[str, Any]:
        if self.uploads is None:
            raise NotSupported("program uploads are not available in this build")
        try:
            data = binascii.a2b_base64(cmd.data, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise Rejected(f"data: not base64: {exc}") from None
        user = self.topics.parse_command(msg.topic)
        who = user.user if user is not None and user.user is not None else ""
        result = await self.uploads.put(who, cmd.sha256, cmd.size, cmd.offset, data, cmd.name or "")
        if result.get("complete") and cmd.name:  # the library lists it by this name
            await self.store.call(
                lambda conn: program_list.name(conn, cmd.sha256, cmd.name or "", who)
            )
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
        rec = AuditRecord(name, cmd.id, self._origin(msg, cmd.on_behalf_of), "accepted")
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
        rec = AuditRecord(name, cmd.id, self._origin(msg, cmd.on_behalf_of), "accepted")

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

        async with self._estop_acting, TaskGroup() as tg:
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
        rec = AuditRecord(
            "maintain", cmd.id, self._origin(msg, cmd.on_behalf_of), "accepted", answers[:500]
        )
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


@dataclass(frozen=True)
class Paged:
    """A page of `jobs` and what the reply's `page` says of the rest."""

    jobs: list[Mapping[str, Any]]
    page: Mapping[str, Any] | None


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
