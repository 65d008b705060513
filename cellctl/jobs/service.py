"""The job service: accepts jobs durably, dispatches their steps, runs them, recovers.

One instance per daemon (`App.jobs`), run as the App component "jobs". Every
change of a job or step is validated against the transition tables, written
to the store in one transaction (synchronous=FULL) and only then applied in
memory and published on the bus as JobChanged / StepChanged. A submission is
acknowledged (the call returns) only after its rows are committed.

A full disk (the store raises StoreFull) stops the service from taking new
work, never from running: submissions are refused below the free-space floor,
nothing is dispatched while the store cannot write, and a step's end that
cannot be written is written again once there is space (docs/jobs.md).

The public API is async and is what the MQTT commands and the CLI requests
call: `submit`, `reprint`, `get`, `list_jobs`, `cancel`, `answer_hold`, `set_setup`,
`set_in_service`, `devices`, `transitions`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cellctl.config import Cell, DeviceConfig, RecoveryPolicy
from cellctl.errors import CellError, DeviceFault, LinkError, StepFailed
from cellctl.events import EventBus
from cellctl.jobs import beds, repo, robot_prep
from cellctl.jobs.api import (
    DeviceInfo,
    HoldAction,
    InvalidRequest,
    JobNotFound,
    Repeat,
    job_summary,
)
from cellctl.jobs.dispatch import (
    SPOOL_KEY,
    BaselineDispatcher,
    Candidate,
    DeviceView,
    Dispatcher,
    DispatchViolation,
    check_assignments,
    make_dispatcher,
)
from cellctl.jobs.gcode import GcodeInfo, cut_short, format_number
from cellctl.jobs.plan_feed import PlanFeed
from cellctl.jobs.preflight import (
    PreflightFailed,
    check_content,
    check_gcode,
    check_program,
    content_policy,
    device_check,
)
from cellctl.jobs.programs import ProgramStore
from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.jobs.recovery import Changes, recovery_plan
from cellctl.jobs.requests import apply_requests
from cellctl.jobs.scanproc import scan
from cellctl.jobs.spec import PREVIOUS, SHA_REF, JobRejected, JobSpec, NoSpace
from cellctl.jobs.states import derive_job_state, job_transition, step_transition
from cellctl.maintenance import carry_out, send_while_working
from cellctl.model import (
    DeviceState,
    Event,
    JobChanged,
    JobState,
    OperatorRequest,
    ProgramKind,
    Progress,
    RequestKind,
    StateChanged,
    StepChanged,
    StepOutcome,
    StepProgress,
    StepResult,
    StepState,
)
from cellctl.retention import delete_jobs, finished_to_drop
from cellctl.store import Store, StoreFull, transaction
from cellctl.supervisor import DeviceRunner, Supervisor
from cellctl.tasks import TaskGroup

if TYPE_CHECKING:  # the planner loads only when a cell plans (its imports cost ~9 MiB)
    from cellctl.jobs.learning import Learning
    from cellctl.jobs.planned import PlannerDispatcher
    from cellctl.jobs.preparation import PrepAction

log = structlog.get_logger("cellctl.jobs")

__all__ = [
    "DeviceInfo",
    "HoldAction",
    "InvalidRequest",
    "JobNotFound",
    "JobService",
    "Repeat",
    "job_summary",
]

# While the disk is full: how often a write that must happen (a step's end) is tried.
FULL_RETRY_S = 1.0

# What `_engaged` holds for a device running an automatic changeover (+ the step key).
AUTO_CHANGEOVER = "changeover for "

# How long a device whose step lock maintenance holds is planned as busy.
LOCKED_S = 10.0
# Device states in which a device may be given a step.
READY_STATES = frozenset({DeviceState.IDLE, DeviceState.COMPLETE})


class JobService:
    def __init__(
        self,
        store: Store,
        supervisor: Supervisor,
        bus: EventBus,
        cell: Callable[[], Cell],
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._bus = bus
        self._cell = cell
        self._wake = asyncio.Event()
        self.dispatcher: Dispatcher = dispatcher or make_dispatcher(
            lambda: self._cell().config.scheduler, self._wake.set
        )
        # Chosen once, at start: the planner's module is imported only when it is the one.
        self._planning: PlannerDispatcher | None = None
        if not isinstance(self.dispatcher, BaselineDispatcher):
            from cellctl.jobs.planned import PlannerDispatcher

            if isinstance(self.dispatcher, PlannerDispatcher):
                self._planning = self.dispatcher
        # Measured durations, for the planner's estimates (loaded only when it plans).
        self.learning: Learning | None = None
        if self._planning is not None:
            from cellctl.jobs.learning import Learning

            self.learning = Learning(store)
        self.programs = ProgramStore(cell().state_dir / "programs")
        self._jobs: dict[str, JobRecord] = {}
        self._devices: dict[str, repo.DeviceRow] = {}
        self._engaged: dict[str, str] = {}  # device id → step key running on it or reserving it
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._aborting: set[str] = set()  # step keys being stopped because their job ended
        self._acked: dict[str, tuple[str, int, int]] = {}
        self._waiting: set[str] = set()  # step keys whose reason names their changeover
        self._robot_preps: set[str] = set()  # preparation jobs submitted (robot_prep.py)
        self._auto_until: dict[str, float] = {}  # device → end estimate of its changeover
        self._uncleared: dict[str, str] = {}  # device → the step whose part is on its bed
        self._lock = asyncio.Lock()
        self._tg: TaskGroup | None = None
        self._next_seq = 1
        self.ready = asyncio.Event()
        self.dispatch_rounds = 0
        self.plan_feed = PlanFeed()  # the retained `plan` topic's payloads (plan_feed.py)

    # --- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """The App component: load, recover, then dispatch until cancelled."""
        while True:
            try:
                await self._load_and_recover()
                break
            except StoreFull as exc:  # recovery writes; with no room it waits for some
                log.error("jobs: cannot recover with the disk full; waiting", error=str(exc))
                await asyncio.sleep(FULL_RETRY_S)
        events = self._bus.subscribe("jobs", maxsize=1000)
        try:
            async with TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._flush_progress_loop(), name="jobs:progress")
                tg.create_task(self._request_loop(), name="jobs:requests")
                tg.create_task(self._watch_devices(events), name="jobs:devices")
                planner = self._planner()
                if planner is not None:
                    tg.create_task(planner.run(), name="jobs:planner")
                if self.learning is not None:
                    tg.create_task(self.learning.run(), name="jobs:learning")
                for device_id, key in self._uncleared.items():  # still asked after a restart
                    self._publish(self._bed_request(device_id, key))
                self.ready.set()
                while True:
                    self._wake.clear()
                    try:
                        await self._dispatch_once()
                    except StoreFull:
                        pass  # the store said so in the log; dispatch waits for room
                    interval = self._cell().config.jobs.dispatch_interval_s
                    try:
                        async with asyncio.timeout(interval):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
        finally:
            self._bus.unsubscribe(events)
            self.ready.clear()

    async def _load_and_recover(self) -> None:
        cell = self._cell()
        initial = {d.id: d.common.setup for d in cell.devices.values()}

        def load(
            conn: Any,
        ) -> tuple[list[JobRecord], dict[str, repo.DeviceRow], dict[str, str]]:
            with transaction(conn):
                repo.ensure_devices(conn, initial)
            return repo.load_jobs(conn), repo.load_devices(conn), beds.load(conn)

        jobs, devices, self._uncleared = await self._store.call(load)
        await asyncio.to_thread(self.programs.sweep_incoming)
        self._jobs = {j.id: j for j in jobs}
        self._devices = devices
        self._next_seq = max((j.seq for j in jobs), default=0) + 1
        recovered = 0
        for job in jobs:
            changes = recovery_plan(job, self._policy)
            if changes:
                recovered += len(changes)
                await self._change(job.id, changes)
        open_jobs = sum(1 for j in self._jobs.values() if not j.state.terminal)
        log.info("jobs loaded", jobs=len(jobs), open=open_jobs, recovered_steps=recovered)

    def _policy(self, device_id: str | None) -> RecoveryPolicy:
        cfg = self._cell().devices.get(device_id or "")
        return cfg.common.recovery if cfg is not None else RecoveryPolicy.HOLD

    # --- public API -----------------------------------------------------------

    async def submit(
        self,
        spec: JobSpec,
        files: Mapping[str, Path] | None = None,
        source: str = "api",
        *,
        repeat: Repeat = Repeat.SAME,
        drop: str | None = None,
    ) -> JobRecord:
        """Accept a job; returns once it is durably stored. Raises JobRejected (nothing
        stored) with the reason: NoSpace below the free-space floor, checked before anything
        is written. A taken id returns the stored job or makes a reprint `<first id>-r<n>`,
        as `repeat` says; `drop` (a hot-folder file's signature) that a stored job came from
        returns that job whatever its state, so that a file read again after a crash
        between commit and delete is one job, not two."""
        spec_json = spec.model_dump_json()
        if self.ready.is_set():
            found = self._taken(spec.id, repeat, drop)
            if found is not None:
                return self._repeat(found, spec_json, source) if repeat == Repeat.SAME else found
        # Before waiting for readiness: a start on a full disk may wait for room to
        # recover, and a refusal must not wait behind it.
        problem = self._store.space_problem(int(self._cell().config.store.min_free_mb * 1e6))
        if problem is not None:
            raise NoSpace(f"job {spec.id} refused: {problem}")
        await self.ready.wait()
        found = self._taken(spec.id, repeat, drop)
        if found is not None:
            return self._repeat(found, spec_json, source) if repeat == Repeat.SAME else found
        self._check_against_cell(spec)
        templates = await asyncio.to_thread(self._prepare_steps, spec, dict(files or {}))
        async with self._lock:
            found = self._taken(spec.id, repeat, drop)
            if found is not None:
                return found
            job_id, family = self._new_id(spec.id)
            if job_id != spec.id:
                try:
                    spec = JobSpec.model_validate({**spec.model_dump(), "id": job_id})
                except ValueError:
                    raise JobRejected(f"job id {job_id!r} is too long to reprint") from None
                spec_json = spec.model_dump_json()
            now = time.time()
            steps = []
            for unit in range(spec.quantity):
                for pos, t in enumerate(templates):
                    steps.append(
                        t.replace(job_id=job_id, index=unit * len(templates) + pos, unit=unit)
                    )
            job = JobRecord(
                id=job_id,
                seq=self._next_seq,
                quantity=spec.quantity,
                priority=spec.priority,
                due=spec.due.timestamp() if spec.due else None,
                source=source,
                state=JobState.QUEUED,
                reason="accepted" if family is None else f"accepted: a reprint of {family}",
                created=now,
                updated=now,
                steps=tuple(steps),
                spec=spec_json,
                family=family,
                drop=drop,
            )

            def write(conn: Any) -> None:
                with transaction(conn):
                    repo.insert_job(conn, job, spec_json)

            self._next_seq += 1
            try:
                await self._store.call(write)
            except asyncio.CancelledError:
                self._jobs[job.id] = job  # the write completes on the store's thread
                raise
            except sqlite3.IntegrityError:
                # Stored by an earlier call that was cancelled after its write.
                stored = await self._store.call(lambda conn: repo.load_job(conn, job_id))
                if stored is None:
                    raise
                self._jobs[stored.id] = stored
                return stored
            self._jobs[job.id] = job
        log.info("job accepted", job=job.id, steps=len(job.steps), source=source, reprint_of=family)
        self._publish(JobChanged(job.id, JobState.QUEUED, None, job.reason))
        self._wake.set()
        return job

    async def reprint(self, job_id: str, source: str = "api") -> JobRecord:
        """A new job `<first id>-r<n>`: the route, quantity, priority and programs of
        `job_id` (in any state) again. Its programs come from the store."""
        job = await self.get(job_id)
        try:
            spec = JobSpec.model_validate_json(job.spec)
        except ValueError:
            raise InvalidRequest(f"job {job_id}: its submission is not stored") from None
        files = {
            s.program_file: self.programs.path(s.program_sha256)
            for s in job.steps
            if s.program_kind == ProgramKind.GCODE and s.program_sha256 and s.program_file
        }
        return await self.submit(spec, files, source=source, repeat=Repeat.ALWAYS)

    def _taken(self, job_id: str, repeat: Repeat, drop: str | None) -> JobRecord | None:
        """The stored job a submission of `job_id` stands for; None: make a new one."""
        existing = self._jobs.get(job_id)
        if existing is None:
            return None
        family = [j for j in self._jobs.values() if j.root == existing.root]
        if drop is not None:
            for j in family:
                if j.drop == drop:
                    return j
        if repeat == Repeat.SAME:
            return existing
        latest = max(family, key=lambda j: j.seq)
        if repeat == Repeat.ENDED and not latest.state.terminal:
            return latest
        return None

    def _new_id(self, job_id: str) -> tuple[str, str | None]:
        """(id, family) of a new job: `job_id` when free, else the next `<first id>-r<n>`."""
        existing = self._jobs.get(job_id)
        if existing is None:
            return job_id, None
        root = existing.root
        n = sum(1 for j in self._jobs.values() if j.root == root)
        while f"{root}-r{n}" in self._jobs:
            n += 1
        return f"{root}-r{n}", root

    @staticmethod
    def _repeat(existing: JobRecord, spec_json: str, source: str) -> JobRecord:
        if existing.spec and existing.spec != spec_json:
            # The id decides (it is the client's idempotency key); say so, loudly.
            log.warning(
                "job id already taken by a different job; the stored job stands",
                job=existing.id,
                source=source,
            )
        return existing

    async def get(self, job_id: str) -> JobRecord:
        await self.ready.wait()
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    async def list_jobs(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        await self.ready.wait()
        wanted = set(states) if states is not None else None
        jobs = sorted(self._jobs.values(), key=lambda j: j.seq)
        return [j for j in jobs if wanted is None or j.state in wanted]

    async def transitions(self, job_id: str) -> list[dict[str, Any]]:
        await self.get(job_id)
        return await self._store.call(lambda conn: repo.transitions(conn, job_id))

    async def cancel(self, job_id: str, reason: str = "cancelled by operator") -> JobRecord:
        """Cancel a job: queued and held steps at once, running ones after a controlled stop."""
        job = await self.get(job_id)
        if job.state.terminal:
            return job
        changes: Changes = {}
        running: list[StepRecord] = []
        for s in job.steps:
            if s.state in (StepState.QUEUED, StepState.HELD):
                changes[s.index] = {"state": StepState.CANCELLED, "reason": reason}
            elif s.state in (StepState.STARTING, StepState.RUNNING):
                running.append(s)
                self._aborting.add(s.key)
        job = await self._change(
            job_id, changes, job_changes={"cancel_requested": True}, why=reason
        )
        for s in running:
            await self._stop_step(s)
        return job

    async def set_priority(self, job_id: str, priority: int, who: str = "operator") -> JobRecord:
        """Change an unfinished job's priority. Steps not yet started are dispatched by it
        from the next round on; a planning cell re-plans (the problem changed)."""
        job = await self.get(job_id)
        if job.state.terminal or job.cancel_requested:
            raise InvalidRequest(f"job {job_id} is {job.state}: its priority cannot change")
        if job.priority == priority:
            return job
        async with self._lock:
            job = self._jobs[job_id]
            now = time.time()
            new = job.replace(priority=priority, updated=now)
            why = f"priority {job.priority} -> {priority} by {who}"

            def write(conn: Any) -> None:
                with transaction(conn):
                    repo.set_priority(conn, job_id, priority, now)
                    repo.add_transition(conn, job_id, None, job.state, job.state, None, why, now)

            try:
                await self._store.call(write)
            except asyncio.CancelledError:  # the write still completes on the store's thread
                self._jobs[job_id] = new
                raise
            self._jobs[job_id] = new
        log.info("job priority changed", job=job_id, priority=priority, was=job.priority, by=who)
        self._wake.set()
        return new

    async def answer_hold(
        self,
        job_id: str,
        index: int,
        action: HoldAction | str,
        *,
        line: int | None = None,
        attempt: int | None = None,
        who: str = "operator",
    ) -> JobRecord:
        """Answer a held step. `attempt` (as shown with the hold) guards against answering
        a hold that has since been replaced by another."""
        action = HoldAction(action)
        job = await self.get(job_id)
        if not 0 <= index < len(job.steps):
            raise InvalidRequest(f"job {job_id} has no step {index}")
        step = job.steps[index]
        if step.state != StepState.HELD:
            raise InvalidRequest(f"step {step.key} is {step.state}, not held")
        if attempt is not None and attempt != step.attempt:
            raise InvalidRequest(
                f"step {step.key}: the hold of attempt {attempt} is gone "
                f"(now attempt {step.attempt})"
            )
        change: dict[str, Any]
        if action == HoldAction.RETRY:
            change = {
                "state": StepState.QUEUED,
                "reason": f"retry by {who}",
                "start_line": 0,
                "pinned": None,  # from the start: the operator cleared the device
            }
        elif action == HoldAction.RESUME:
            if step.program_kind != ProgramKind.GCODE:
                raise InvalidRequest(f"step {step.key}: only G-code steps resume from a line")
            start = line if line is not None else (step.last_acked_line or 0) + 1
            total = step.gcode.lines if step.gcode else None
            if start < 1 or (total is not None and start > total):
                raise InvalidRequest(
                    f"step {step.key}: line {start} is outside the program (1 … {total})"
                )
            change = {
                "state": StepState.QUEUED,
                "reason": f"resume from line {start} by {who}",
                "start_line": start,
                "pinned": step.pinned or step.device,  # where the part is
            }
        elif action == HoldAction.DONE:
            change = {
                "state": StepState.DONE,
                "reason": f"confirmed done by {who}",
                "ended": time.time(),
                "pinned": None,
            }
        else:
            return await self._fail(job_id, index, f"failed by {who}: {step.reason}", pinned=None)
        return await self._change(job_id, {index: change})

    async def set_setup(
        self, device_id: str, setup: Mapping[str, str], *, merge: bool = False
    ) -> DeviceInfo:
        """Record what an operator loaded on a device (replaces the stored setup, or
        updates some keys with `merge`)."""
        await self.ready.wait()
        row = self._device_row(device_id)
        new_setup = {**row.setup, **setup} if merge else dict(setup)
        new_setup = {str(k): str(v) for k, v in new_setup.items()}
        await self._save_device(repo.DeviceRow(row.id, new_setup, row.in_service, row.note))
        log.info("device setup changed", device=device_id, setup=new_setup)
        if self.learning is not None:
            self.learning.setup_recorded(device_id, new_setup, time.time())
        return self._device_info(device_id)

    async def set_in_service(self, device_id: str, in_service: bool, note: str = "") -> DeviceInfo:
        """Take a device out of service (it gets no new steps) or put it back."""
        await self.ready.wait()
        row = self._device_row(device_id)
        await self._save_device(repo.DeviceRow(row.id, row.setup, in_service, note))
        log.info("device service changed", device=device_id, in_service=in_service, note=note)
        return self._device_info(device_id)

    async def devices(self) -> dict[str, DeviceInfo]:
        await self.ready.wait()
        return {d: self._device_info(d) for d in self._cell().devices}

    # --- submission -----------------------------------------------------------

    def _check_against_cell(self, spec: JobSpec) -> None:
        devices = self._cell().devices
        offered = {p for d in devices.values() for p in d.common.processes}
        for pos, step in enumerate(spec.route):
            if step.process not in offered:
                have = ", ".join(sorted(offered)) or "none"
                raise JobRejected(
                    f"step {pos}: no device in the cell can do process {step.process!r} "
                    f"(processes offered: {have})"
                )
            if step.device is not None:
                target = devices.get(step.device)
                if target is None:
                    raise JobRejected(f"step {pos}: no device {step.device!r} in the cell")
                if step.process not in target.common.processes:
                    can = ", ".join(target.common.processes) or "nothing"
                    raise JobRejected(
                        f"step {pos}: device {step.device!r} cannot do process "
                        f"{step.process!r} (it does: {can})"
                    )
            for r in step.reserves:
                if r == PREVIOUS and pos == 0:
                    raise JobRejected(f"step 0: reserves {PREVIOUS}, but there is no earlier step")
                if r != PREVIOUS and r not in devices:
                    raise JobRejected(f"step {pos}: reserves unknown device {r!r}")

    def _prepare_steps(self, spec: JobSpec, files: dict[str, Path]) -> list[StepRecord]:
        """Blocking: store the programs (content-addressed) and read their metadata."""
        stored: dict[str, tuple[str, GcodeInfo]] = {}
        out = []
        for pos, step in enumerate(spec.route):
            prog = step.program_spec()
            sha: str | None = None
            info: GcodeInfo | None = None
            if prog.kind == ProgramKind.GCODE:
                name = prog.file or ""
                if not name:
                    raise JobRejected(f"step {pos}: a G-code program needs a file")
                if name not in stored:
                    stored[name] = self._store_program(pos, name, files)
                sha, info = stored[name]
            estimate = step.estimated_s
            if estimate is None and info is not None:
                estimate = info.estimated_s
            out.append(
                StepRecord(
                    job_id=spec.id,
                    index=pos,
                    unit=0,
                    position=pos,
                    process=step.process,
                    program_kind=prog.kind,
                    program_sha256=sha,
                    program_file=prog.file or "",
                    program_name=prog.name,
                    program_parameters=dict(prog.parameters),
                    gcode=info,
                    setup=dict(step.setup),
                    reserves=step.reserves,
                    estimated_s=estimate,
                    target=step.device,
                )
            )
        return out

    def _store_program(self, pos: int, name: str, files: dict[str, Path]) -> tuple[str, GcodeInfo]:
        m = SHA_REF.match(name)
        if m:
            sha = m.group(1)
            if not self.programs.path(sha).is_file():
                raise JobRejected(f"step {pos}: program {name} is not in the store")
        else:
            src = files.get(name)
            if src is None:
                raise JobRejected(f"step {pos}: program file {name!r} was not provided")
            try:
                sha = self.programs.put_file(src)
            except OSError as exc:
                raise JobRejected(f"step {pos}: cannot read program {name!r}: {exc}") from None
        try:
            info = scan(self.programs.path(sha))  # a large file in a worker process
            short = cut_short(self.programs.path(sha)) if info.complete is False else None
        except OSError as exc:
            raise JobRejected(f"step {pos}: cannot read program {name!r}: {exc}") from None
        if short:
            raise JobRejected(f"step {pos}: program {name!r} looks cut short: {short}")
        return sha, info

    # --- state changes --------------------------------------------------------

    async def _change(
        self,
        job_id: str,
        changes: Changes,
        *,
        job_changes: Mapping[str, Any] | None = None,
        why: str = "",
    ) -> JobRecord:
        """Validate, store (one transaction), apply, publish. The only writer of jobs."""
        async with self._lock:
            job = self._jobs[job_id]
            now = time.time()
            steps = list(job.steps)
            events: list[Event] = []
            changed: list[StepRecord] = []
            for idx, fields in sorted(changes.items()):
                old = steps[idx]
                new = old.replace(**fields)
                if new.state != old.state:
                    step_transition(old.state, new.state)
                    if new.state == StepState.HELD:
                        events.append(self._hold_request(new))
                    events.append(
                        StepChanged(
                            job_id,
                            idx,
                            new.state,
                            old.state,
                            new.device,
                            new.reason,
                            new.attempt,
                            now,
                        )
                    )
                steps[idx] = new
                changed.append(new)
            new_job = job.replace(steps=tuple(steps), updated=now, **dict(job_changes or {}))
            sched = self._cell().config.scheduler
            spools = self._spools_after(changed, job)
            parts_left = [
                (s.device, s.key)
                for s in changed
                if s.state == StepState.DONE
                and job.steps[s.index].state != StepState.DONE
                and s.device is not None
                and sched.clears_bed(s.device)
                and beds.leaves_part(new_job, s)
            ]
            job_event: JobChanged | None = None
            if not job.state.terminal:
                state = derive_job_state((s.state for s in steps), new_job.cancel_requested)
                if state != job.state:
                    job_transition(job.state, state)
                    reason = why or self._job_reason(state, steps)
                    new_job = new_job.replace(state=state, reason=reason)
                    job_event = JobChanged(job_id, state, job.state, reason, now)

            def write(conn: Any) -> None:
                with transaction(conn):
                    for s in changed:
                        repo.update_step(conn, s)
                        old = job.steps[s.index]
                        if s.state != old.state:
                            repo.add_transition(
                                conn, job_id, s.index, old.state, s.state, s.device, s.reason, now
                            )
                    repo.update_job(conn, new_job)
                    for device_id, key in parts_left:
                        beds.mark(conn, device_id, key, now)
                    for row in spools:
                        repo.save_device(conn, row)
                    if job_event is not None:
                        repo.add_transition(
                            conn, job_id, None, job.state, new_job.state, None, new_job.reason, now
                        )

            try:
                await self._store.call(write)
            except asyncio.CancelledError:
                # The write still runs to its end on the store's thread (and later
                # writes queue behind it): keep memory equal to what will be stored.
                self._jobs[job_id] = new_job
                self._apply_device_marks(spools, parts_left)
                raise
            self._jobs[job_id] = new_job
            self._apply_device_marks(spools, parts_left)
            events.extend(self._bed_request(d, key) for d, key in parts_left)
        for ev in events:
            self._publish(ev)
        if job_event is not None:
            self._publish(job_event)
            log.info("job changed", job=job_id, state=job_event.state, reason=job_event.reason)
        self._wake.set()
        return new_job

    def _apply_device_marks(
        self, spools: list[repo.DeviceRow], parts_left: list[tuple[str, str]]
    ) -> None:
        """Memory after a step's end was stored: spools counted down, beds to clear."""
        for row in spools:
            self._devices[row.id] = row
        for device_id, key in parts_left:
            self._uncleared[device_id] = key

    @staticmethod
    def _bed_request(device_id: str, step_key: str) -> OperatorRequest:
        return OperatorRequest(
            device_id=device_id,
            kind=RequestKind.CLEAR_BED,
            text=f"clear the bed of {device_id} (the part of {step_key} is on it)",
            step_key=step_key,
            details={"cleared": False},
        )

    async def confirm_bed_clear(self, device_id: str, who: str = "operator") -> DeviceInfo:
        """An operator took the part off: the device may take work again."""
        await self.ready.wait()
        self._device_row(device_id)  # a known device, or InvalidRequest
        async with self._lock:
            key = self._uncleared.get(device_id)
            if key is None:
                raise InvalidRequest(f"the bed of {device_id} is not waiting to be cleared")

            def write(conn: Any) -> None:
                with transaction(conn):
                    beds.clear(conn, device_id)

            await self._store.call(write)
            del self._uncleared[device_id]
        log.info("bed cleared", device=device_id, step=key, who=who)
        self._publish(
            OperatorRequest(
                device_id=device_id,
                kind=RequestKind.CLEAR_BED,
                text=f"bed of {device_id} cleared by {who}",
                step_key=key,
                details={"cleared": True},
            )
        )
        self._wake.set()
        return self._device_info(device_id)

    def bed_uncleared(self, device_id: str) -> bool:
        return device_id in self._uncleared

    @staticmethod
    def _hold_request(step: StepRecord) -> OperatorRequest:
        """A held step asks for an operator: published so that dashboards can show it."""
        kind = RequestKind.ACKNOWLEDGE
        if step.reason.startswith("pre-flight: material"):
            kind = RequestKind.LOAD_MATERIAL
        actions = [a.value for a in HoldAction]
        if step.program_kind != ProgramKind.GCODE:
            actions.remove(HoldAction.RESUME.value)
        return OperatorRequest(
            device_id=step.device or "",
            kind=kind,
            text=f"step {step.key} held: {step.reason}",
            step_key=step.key,
            details={
                "job_id": step.job_id,
                "index": step.index,
                "attempt": step.attempt,
                "actions": actions,
                "last_acked_line": step.last_acked_line,
            },
        )

    @staticmethod
    def _job_reason(state: JobState, steps: list[StepRecord]) -> str:
        wanted = {JobState.FAILED: StepState.FAILED, JobState.HELD: StepState.HELD}.get(state)
        if wanted is None:
            return ""
        for s in steps:
            if s.state == wanted:
                return f"step {s.index} ({s.process}): {s.reason}"
        return ""

    async def _fail(self, job_id: str, index: int, reason: str, **fields: Any) -> JobRecord:
        """Fail one step; the job fails, its waiting steps are cancelled, running ones stopped."""
        job = self._jobs[job_id]
        changes: Changes = {index: {"state": StepState.FAILED, "reason": reason, **fields}}
        running = []
        for s in job.steps:
            if s.index == index or s.state.terminal:
                continue
            if s.state in (StepState.QUEUED, StepState.HELD):
                changes[s.index] = {
                    "state": StepState.CANCELLED,
                    "reason": f"step {index} failed",
                }
            else:
                running.append(s)
                self._aborting.add(s.key)
        job = await self._change(job_id, changes)
        for s in running:
            await self._stop_step(s)
        return job

    def _publish(self, event: Event) -> None:
        self._bus.publish(event)
        if self.learning is not None:
            self.learning.saw(event, self._step_of)

    def _learned_view(self) -> dict[str, Any] | None:
        """Configured vs learned durations, for the published plan."""
        if self.learning is None:
            return None
        return self.learning.compare(self._cell().config.scheduler)

    def _step_of(self, job_id: str, index: int) -> StepRecord | None:
        job = self._jobs.get(job_id)
        return job.steps[index] if job is not None and index < len(job.steps) else None

    # --- devices ----------------------------------------------------------------

    def _device_row(self, device_id: str) -> repo.DeviceRow:
        if device_id not in self._cell().devices:
            raise InvalidRequest(f"no device {device_id!r} in the cell")
        row = self._devices.get(device_id)
        if row is None:
            cfg = self._cell().devices[device_id]
            row = repo.DeviceRow(device_id, dict(cfg.common.setup), True, "")
        return row

    async def _save_device(self, row: repo.DeviceRow) -> None:
        async with self._lock:

            def write(conn: Any) -> None:
                with transaction(conn):
                    repo.save_device(conn, row)

            await self._store.call(write)
            self._devices[row.id] = row
        self._wake.set()

    def _device_info(self, device_id: str) -> DeviceInfo:
        row = self._device_row(device_id)
        cfg = self._cell().devices[device_id]
        runner = self._supervisor.runners.get(device_id)
        return DeviceInfo(
            id=device_id,
            processes=cfg.common.processes,
            setup=dict(row.setup),
            in_service=row.in_service,
            note=row.note,
            state=runner.state if runner else DeviceState.UNAVAILABLE,
            busy_with=self._engaged.get(device_id),
        )

    def _device_views(self, kept: Mapping[str, str]) -> dict[str, DeviceView]:
        views = {}
        for dev_id, cfg in self._cell().devices.items():
            if not cfg.common.enabled:
                continue
            row = self._device_row(dev_id)
            runner = self._supervisor.runners.get(dev_id)
            free = (
                runner is not None
                and runner.driver is not None
                and runner.state in READY_STATES
                and not runner.busy
                and row.in_service
                and dev_id not in self._engaged
                and dev_id not in self._uncleared
            )
            views[dev_id] = DeviceView(
                dev_id,
                frozenset(cfg.common.processes),
                row.setup,
                free,
                kept.get(dev_id),
                None if free else self._busy_until(dev_id),
            )
        return views

    def _busy_until(self, dev_id: str) -> float | None:
        """When the step engaging the device should end (started + its estimate)."""
        if dev_id in self._uncleared and dev_id not in self._engaged:
            return time.time() + self._cell().config.scheduler.bed_clearing_s
        key = self._engaged.get(dev_id)
        if key is None:
            runner = self._supervisor.runners.get(dev_id)
            if runner is not None and runner.busy and runner.state in READY_STATES:
                # Maintenance or a preparation holds its step lock: busy a moment, not down
                # (the planner would drop the device and withdraw its changeover).
                return time.time() + LOCKED_S
            return None
        if key.startswith(AUTO_CHANGEOVER):
            return self._auto_until.get(dev_id)
        job_id, _, index = key.rpartition("/")
        job = self._jobs.get(job_id)
        if job is None:
            return None
        step = job.steps[int(index)]
        started = step.started or time.time()
        return started + (step.estimated_s or self._cell().config.scheduler.default_step_s)

    def _planner(self) -> PlannerDispatcher | None:
        """The dispatcher when it is the planner (its module is loaded only then)."""
        return self._planning

    def _start_automatic(self, planner: PlannerDispatcher) -> None:
        """Run the plan's automatic changeovers, each holding its device meanwhile."""
        assert self._tg is not None
        sched = self._cell().config.scheduler
        for change in planner.take_automatic():
            if change.device in self._engaged:
                continue
            self._engaged[change.device] = AUTO_CHANGEOVER + change.step_key
            seconds = sum(sched.key_change(k, change.device).seconds for k in change.setup)
            self._auto_until[change.device] = time.time() + seconds
            self._tg.create_task(
                self._automatic_changeover(planner, change.device, dict(change.setup)),
                name=f"changeover:{change.device}",
            )

    def _start_preparations(self, planner: PlannerDispatcher) -> None:
        """Send the plan's preparation lines (preheating ahead of a manual changeover) as
        maintenance lines: the device idle, its step lock held meanwhile."""
        assert self._tg is not None
        for prep in planner.take_preparations():
            runner = self._supervisor.runners.get(prep.device)
            engaged = self._engaged.get(prep.device)
            if runner is None or (
                engaged is not None
                and (not prep.while_working or engaged.startswith(AUTO_CHANGEOVER))
            ):
                continue
            self._tg.create_task(self._prepare(runner, prep), name=f"prepare:{prep.device}")

    async def _prepare(self, runner: DeviceRunner, prep: PrepAction) -> None:
        what = "undo preparation" if prep.undo else "preparation"
        try:
            if prep.while_working and prep.device in self._engaged:
                # Between the running step's own lines; the step goes on.
                await send_while_working(runner, prep.device, prep.lines)
            else:
                await carry_out(runner, prep.device, prep.lines)
            log.info(what, device=prep.device, step=prep.step_key, lines=list(prep.lines))
        except CellError as exc:  # a refused line: the changeover is only slower
            log.warning(f"{what} not sent", device=prep.device, error=str(exc))

    async def _automatic_changeover(
        self, planner: PlannerDispatcher, device_id: str, setup: dict[str, str]
    ) -> None:
        """The device changes its own setup (driver `change_setup`); the new setup is
        stored only once that returned, so a crash meanwhile leaves the old one and the
        next plan runs the change again."""
        runner = self._supervisor.runners.get(device_id)
        bound = self._cell().config.scheduler.automatic_timeout_s
        log.info("automatic changeover", device=device_id, setup=setup)
        try:
            driver = runner.driver if runner is not None else None
            if driver is None:
                raise LinkError(f"{device_id} is not connected")
            before, t0 = dict(self._device_row(device_id).setup), time.monotonic()
            async with asyncio.timeout(bound):
                await driver.change_setup(setup)
            took = time.monotonic() - t0
            await self.set_setup(device_id, setup, merge=True)
            if self.learning is not None:
                self.learning.automatic_done(device_id, before, setup, took)
            log.info("automatic changeover done", device=device_id, setup=setup)
        except (CellError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning(
                "automatic changeover failed; asking an operator", device=device_id, error=reason
            )
            planner.automatic_failed(device_id, reason)
        finally:
            if self._engaged.get(device_id, "").startswith(AUTO_CHANGEOVER):
                del self._engaged[device_id]
            self._auto_until.pop(device_id, None)
            self._wake.set()

    async def _robot_preparations(self, planner: PlannerDispatcher) -> None:
        """Submit the robot preparations the announced changeovers call for (robot_prep.py,
        planned like any step); cancel one not started once its changeover is asked no
        more (withdrawn, or done without it)."""
        cfg = self._cell().config.scheduler
        if not self._robot_preps and not any(p.robot for p in cfg.preparation.values()):
            return
        want = robot_prep.wanted(planner.announcer.shown(), cfg, time.time())
        for jid, spec in want.items():
            if jid in self._robot_preps:
                continue
            self._robot_preps.add(jid)  # tried once per announcement, also when refused
            try:
                await self.submit(spec, source="preparation")
            except JobRejected as exc:
                log.warning("robot preparation not submitted", job=jid, error=str(exc))
                continue
            log.info("robot preparation", job=jid)
        for jid in self._robot_preps - set(want):
            self._robot_preps.discard(jid)
            job = self._jobs.get(jid)
            if job is not None and all(s.state == StepState.QUEUED for s in job.steps):
                await self.cancel(jid, "its changeover is asked no more")

    async def _changeovers(self, planner: PlannerDispatcher) -> None:
        """Publish the planner's changeover requests; a step waiting for one says so."""
        # No request here can ask for a setup already loaded: the dispatcher built each
        # from the stored setups of this very round (`Needed.load` holds only the keys
        # `unmet` finds), and nothing awaits between `assign` and here.
        for request in planner.take_requests():
            self._publish(request)
            log.info("changeover request", device=request.device_id, text=request.text)
        reasons = planner.waiting_reasons()
        for key in self._waiting - set(reasons):  # asked no more: say so, not the old ask
            reasons[key] = "queued: its changeover request was withdrawn by a re-plan"
        self._waiting = {k for k, r in reasons.items() if r.startswith("waiting")}
        for key, reason in reasons.items():
            job_id, _, index = key.rpartition("/")
            job = self._jobs.get(job_id)
            if job is None:
                continue
            step = job.steps[int(index)]
            if step.state == StepState.QUEUED and step.reason != reason:
                await self._change(job_id, {step.index: {"reason": reason}})

    async def _watch_devices(self, events: Any) -> None:
        async for ev in events:
            if isinstance(ev, StateChanged):
                self._wake.set()

    # --- dispatch -----------------------------------------------------------------

    def _kept(self) -> dict[str, str]:
        """Devices kept for one step (device → step key), taking no other work meanwhile:
        * a step held part-way, or queued to resume, keeps the device it ran on (the
          half-made part is still there);
        * a step that reserves `@previous` keeps the device that runs or ran its
          predecessor (a printer waits for the robot that unloads it)."""
        out: dict[str, str] = {}
        for job in self._jobs.values():
            if job.state.terminal or job.cancel_requested:
                continue
            for s in job.steps:
                if s.state not in (StepState.QUEUED, StepState.HELD):
                    continue
                if s.pinned:
                    out.setdefault(s.pinned, s.key)
                if PREVIOUS in s.reserves:
                    prev = job.predecessor(s)
                    # Also while the predecessor runs: the planner then plans nothing
                    # else on that device between its end and the unload.
                    held = (StepState.DONE, StepState.STARTING, StepState.RUNNING)
                    if prev is not None and prev.state in held and prev.device:
                        out.setdefault(prev.device, s.key)
        return out

    def _candidates(self) -> tuple[list[Candidate], list[tuple[str, int, str]]]:
        """Steps that may start now, and steps no configured device could ever run.
        With the planner, the later steps of each route go to `note_later`."""
        devices = self._cell().devices
        offered = {p for d in devices.values() for p in d.common.processes}
        out: list[Candidate] = []
        later: list[Candidate] = []
        never: list[tuple[str, int, str]] = []
        planner = self._planner()
        planning = planner is not None
        for job in self._jobs.values():
            if job.state.terminal or job.cancel_requested:
                continue
            for s in job.steps:
                if s.state != StepState.QUEUED:
                    continue
                prev = job.predecessor(s)
                ahead: dict[str, Any] = {}
                if prev is not None and prev.state != StepState.DONE:
                    if not planning:
                        continue
                    # Planned ahead (whole routes): after a queued predecessor, or
                    # released at a running one's expected end; none after a held one.
                    if prev.state == StepState.QUEUED:
                        ahead = {"after": prev.key}
                    elif prev.state in (StepState.STARTING, StepState.RUNNING) and prev.device:
                        ahead = {"after": prev.key, "ready_at": self._busy_until(prev.device)}
                    else:
                        continue
                if ahead and s.process not in offered:
                    continue  # said (and failed) when it may start
                if s.process not in offered:
                    never.append((job.id, s.index, f"no device in the cell can do {s.process!r}"))
                    continue
                reserves = tuple(
                    (prev.device or "") if r == PREVIOUS and prev is not None else r
                    for r in s.reserves
                )
                if ahead and prev is not None and prev.state == StepState.QUEUED:
                    reserves = s.reserves  # its device is not known yet: `@previous`
                if any(r not in devices and not (ahead and r == PREVIOUS) for r in reserves):
                    if ahead:
                        continue
                    never.append((job.id, s.index, f"reserves unknown device(s) {reserves}"))
                    continue
                (later if ahead else out).append(
                    Candidate(
                        key=s.key,
                        job_id=job.id,
                        index=s.index,
                        seq=job.seq,
                        priority=job.priority,
                        process=s.process,
                        setup=self._needs(s, planning),
                        reserves=reserves,
                        estimated_s=s.estimated_s,
                        due=job.due,
                        only_on=s.pinned or s.target,
                        clear_s=self._clear_s(job, s) if planning else 0,
                        filament_g=s.gcode.filament_g if s.gcode is not None else None,
                        submitted=job.created,
                        **ahead,
                    )
                )
        if planner is not None:
            planner.note_later(later)
        return out, never

    def _spools_after(self, changed: list[StepRecord], job: JobRecord) -> list[repo.DeviceRow]:
        """Devices whose counted spool a step just ended (done) took filament off: the
        grams are stored with the step's end (one transaction), so a crash loses none."""
        out: dict[str, repo.DeviceRow] = {}
        for s in changed:
            grams = s.gcode.filament_g if s.gcode is not None else None
            if s.state != StepState.DONE or job.steps[s.index].state == StepState.DONE:
                continue
            if grams is None or s.device is None or s.device not in self._cell().devices:
                continue
            row = out.get(s.device) or self._device_row(s.device)
            try:
                left = float(row.setup[SPOOL_KEY])
            except (KeyError, ValueError):
                continue
            setup = {**row.setup, SPOOL_KEY: format_number(round(max(0.0, left - grams), 1))}
            out[s.device] = repo.DeviceRow(row.id, setup, row.in_service, row.note)
        return list(out.values())

    def _clear_s(self, job: JobRecord, step: StepRecord) -> int:
        """The bed clearing the planner plans after this step (0: none)."""
        sched = self._cell().config.scheduler
        devices = self._cell().devices
        clears = any(
            step.process in cfg.common.processes
            for d, cfg in devices.items()
            if sched.clears_bed(d)
        )
        return sched.bed_clearing_s if clears and beds.leaves_part(job, step) else 0

    @staticmethod
    def _needs(step: StepRecord, planning: bool) -> Mapping[str, str]:
        """The setup a step needs. The planner also reads a G-code file's own (material,
        nozzle), so that a bare file gets its changeover instead of a pre-flight hold."""
        if not planning or step.gcode is None:
            return step.setup
        return {**step.gcode.requirements(), **step.setup}

    async def _dispatch_once(self) -> None:
        self.dispatch_rounds += 1
        candidates, never = self._candidates()
        for job_id, index, reason in never:
            await self._fail(job_id, index, f"rejected: {reason}")
        planner = self._planner()
        if not candidates and planner is None:
            return
        views = self._device_views(self._kept())
        if not any(v.free for v in views.values()) and planner is None:
            return
        assignments = self.dispatcher.assign(candidates, views)
        if planner is not None:
            await self._changeovers(planner)
            self._start_automatic(planner)
            self._start_preparations(planner)
            await self._robot_preparations(planner)
            if self.learning is not None:
                planner.adjust = self.learning.times  # applied at the next re-plan
            self.plan_feed.offer(planner.current, self._learned_view)
        by_key = {c.key: c for c in candidates}
        try:
            check_assignments(assignments, by_key, views)
        except DispatchViolation as exc:
            log.error("dispatcher broke a rule; nothing started this round", error=str(exc))
            return
        assert self._tg is not None
        for a in assignments:
            c = by_key[a.key]
            reserved = a.reserves
            for d in (a.device, *reserved):
                self._engaged[d] = a.key
            step = self._jobs[c.job_id].steps[c.index]
            try:
                await self._change(
                    c.job_id,
                    {
                        c.index: {
                            "state": StepState.STARTING,
                            "reason": f"dispatched to {a.device}",
                            "device": a.device,
                            "reserved": reserved,
                            "attempt": step.attempt + 1,
                            "started": time.time(),
                            "ended": None,
                        }
                    },
                )
            except BaseException:
                for d in (a.device, *reserved):
                    self._engaged.pop(d, None)
                raise
            self._tasks[a.key] = self._tg.create_task(
                self._step_task(c.job_id, c.index, a.device, reserved), name=f"step:{a.key}"
            )

    # --- running a step -------------------------------------------------------------

    async def _step_task(
        self, job_id: str, index: int, device_id: str, reserved: tuple[str, ...]
    ) -> None:
        key = f"{job_id}/{index}"
        try:
            await self._execute(job_id, index, device_id)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if key not in self._aborting or task is None:
                raise  # the daemon is stopping: the store keeps the step as it was
            task.uncancel()
            await self._finish(job_id, index, {"state": StepState.CANCELLED, "reason": "cancelled"})
        except Exception as exc:  # a bug here or in a driver: hold, never lose the step
            log.error("step crashed", step=key, error=repr(exc), exc_info=exc)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            try:
                await self._finish(job_id, index, {"state": StepState.HELD, "reason": reason})
            except CellError as again:  # the step cannot be held from where it is: say so
                log.error("step left as it was", step=key, error=str(again))
        finally:
            for d in (device_id, *reserved):
                if self._engaged.get(d) == key:
                    del self._engaged[d]
            self._tasks.pop(key, None)
            self._aborting.discard(key)
            self._acked.pop(key, None)
            self._wake.set()

    async def _finish(self, job_id: str, index: int, fields: dict[str, Any]) -> None:
        """Apply a step's end; a step already ended (cancelled meanwhile) stays as it is.

        A full disk does not lose it: the step keeps its device and the end is written
        once there is room (tried every FULL_RETRY_S)."""
        waited = False
        while True:
            try:
                await self._finish_once(job_id, index, fields)
            except StoreFull as exc:
                if not waited:
                    log.error(
                        "step ended but the disk is full; recorded once there is room",
                        step=f"{job_id}/{index}",
                        state=str(fields.get("state")),
                        error=str(exc),
                    )
                    waited = True
                await asyncio.sleep(FULL_RETRY_S)
                continue
            if waited:
                log.warning("step end recorded once the disk had room", step=f"{job_id}/{index}")
            return

    async def _finish_once(self, job_id: str, index: int, fields: dict[str, Any]) -> None:
        step = self._jobs[job_id].steps[index]
        if step.state.terminal:
            return
        state = fields["state"]
        if state == StepState.FAILED:
            rest = {k: v for k, v in fields.items() if k not in ("state", "reason")}
            await self._fail(job_id, index, fields["reason"], **rest)
            return
        if state == StepState.HELD and step.state == StepState.RUNNING:
            fields = {"pinned": step.device, **fields}  # stopped part-way: resume there
        if state in (StepState.HELD, StepState.QUEUED) and self._jobs[job_id].cancel_requested:
            fields = {**fields, "state": StepState.CANCELLED}
        if state == StepState.QUEUED and step.state == StepState.STARTING:
            fields = {**fields, "device": None, "reserved": ()}
        await self._change(job_id, {index: fields})

    async def _execute(self, job_id: str, index: int, device_id: str) -> None:
        step = self._jobs[job_id].steps[index]
        cfg: DeviceConfig | None = self._cell().devices.get(device_id)
        runner: DeviceRunner | None = self._supervisor.runners.get(device_id)
        if cfg is None or runner is None or runner.driver is None:
            await self._finish(
                job_id, index, {"state": StepState.QUEUED, "reason": f"{device_id} went away"}
            )
            return
        loaded = self._device_row(device_id).setup
        try:
            path = await asyncio.to_thread(check_program, self.programs, step)
            if step.gcode is not None:
                problems = check_gcode(step.gcode, device_id, loaded, cfg.common.build_volume)
                if problems:
                    raise PreflightFailed("; ".join(problems))
                policy = content_policy(cfg)
                if policy is not None and path is not None:
                    await asyncio.to_thread(check_content, path, policy)
            driver_step = step.to_step(path)
            if cfg.common.program_check and runner.driver is not None:
                await device_check(
                    runner.driver, driver_step, self._cell().config.jobs.device_check_timeout_s
                )
        except PreflightFailed as exc:
            log.warning("pre-flight failed; step held", step=step.key, reason=str(exc))
            await self._finish(
                job_id, index, {"state": StepState.HELD, "reason": f"pre-flight: {exc}"}
            )
            return
        except LinkError as exc:
            await self._finish(
                job_id, index, {"state": StepState.QUEUED, "reason": f"{device_id}: {exc}"}
            )
            return
        try:
            await self._change(
                job_id,
                {
                    index: {
                        "state": StepState.RUNNING,
                        "reason": f"running on {device_id}"
                        + (f" from line {step.start_line}" if step.start_line else ""),
                        "ran_sha256": step.program_sha256,
                    }
                },
            )
        except StoreFull:  # nothing was sent to the device: back to the queue
            await self._finish(
                job_id, index, {"state": StepState.QUEUED, "reason": "disk full before start"}
            )
            return
        key = step.key

        def progress(p: Progress) -> None:
            self._publish(StepProgress(device_id, key, p))
            if p.last_acked_line is not None:
                self._acked[key] = (job_id, index, p.last_acked_line)

        try:
            result = await runner.run_step(driver_step, progress)
        except LinkError as exc:
            # run_step found no driver: nothing was sent to the device.
            await self._finish(
                job_id, index, {"state": StepState.QUEUED, "reason": f"{device_id}: {exc}"}
            )
            return
        except StepFailed as exc:
            result = StepResult(StepOutcome.FAILED, str(exc))
        except DeviceFault as exc:
            result = StepResult(StepOutcome.INTERRUPTED, f"device fault: {exc}")
        except CellError as exc:
            result = StepResult(StepOutcome.INTERRUPTED, f"{type(exc).__name__}: {exc}")
        await self._finish(job_id, index, self._result_fields(device_id, key, result))

    def _result_fields(self, device_id: str, key: str, result: StepResult) -> dict[str, Any]:
        acked = self._acked.get(key)
        last = result.last_line if result.last_line is not None else (acked[2] if acked else None)
        base: dict[str, Any] = {"ended": time.time()}
        if last is not None:
            base["last_acked_line"] = last
        note = f"; last acknowledged line {last}" if last is not None else ""
        message = result.message or result.outcome.value
        if result.outcome == StepOutcome.DONE:
            return {**base, "state": StepState.DONE, "reason": f"done on {device_id}"}
        if result.outcome == StepOutcome.FAILED:
            return {**base, "state": StepState.FAILED, "reason": f"{device_id}: {message}"}
        if result.outcome == StepOutcome.CANCELLED:
            if key in self._aborting:
                return {**base, "state": StepState.CANCELLED, "reason": "cancelled"}
            return {
                **base,
                "state": StepState.HELD,
                "reason": f"stopped at {device_id}: {message}{note}",
            }
        policy = self._policy(device_id)
        what = f"interrupted on {device_id}: {message}{note}"
        if policy == RecoveryPolicy.RESTART:
            return {**base, "state": StepState.QUEUED, "reason": what + "; restarting"}
        if policy == RecoveryPolicy.FAIL:
            return {**base, "state": StepState.FAILED, "reason": what}
        return {**base, "state": StepState.HELD, "reason": what}

    async def _stop_step(self, step: StepRecord) -> None:
        """Controlled stop of a running step (driver.stop), then a hard cancel if it lingers."""
        task = self._tasks.get(step.key)
        if task is None:
            return
        runner = self._supervisor.runners.get(step.device or "")
        current = self._jobs[step.job_id].steps[step.index]
        bound = self._cell().config.jobs.stop_timeout_s
        if current.state == StepState.RUNNING and runner is not None and runner.driver is not None:
            try:
                async with asyncio.timeout(bound):
                    await runner.driver.stop()
            except (CellError, TimeoutError) as exc:
                log.warning("controlled stop failed", step=step.key, error=str(exc))
            done, _ = await asyncio.wait({task}, timeout=bound)
            if done:
                return
        task.cancel()

    # --- progress and requests -------------------------------------------------------

    async def _flush_progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cell().config.jobs.progress_flush_s)
            try:
                await self.flush_progress()
            except StoreFull:
                pass  # kept in memory; the next flush with room writes the latest line

    async def flush_progress(self) -> None:
        """Store the last acknowledged line of every running step (one group commit)."""
        if not self._acked:
            return
        batch = list(self._acked.values())
        async with self._lock:
            fresh = [
                (j, i, line)
                for j, i, line in batch
                if self._jobs[j].steps[i].state == StepState.RUNNING
                and self._jobs[j].steps[i].last_acked_line != line
            ]
            if not fresh:
                return

            def write(conn: Any) -> None:
                with transaction(conn):
                    repo.save_acked_lines(conn, fresh)

            await self._store.call(write)
            for j, i, line in fresh:
                job = self._jobs[j]
                steps = list(job.steps)
                steps[i] = steps[i].replace(last_acked_line=line)
                self._jobs[j] = job.replace(steps=tuple(steps))

    async def _request_loop(self) -> None:
        while True:
            try:
                await self.apply_requests()
            except StoreFull:
                await asyncio.sleep(FULL_RETRY_S)  # a request is applied once there is room
            await asyncio.sleep(0.2)

    async def prune(self, cutoff: float, keep_max: int) -> int:
        """Retention: delete finished jobs past it from the store and from memory."""
        await self.ready.wait()
        async with self._lock:
            ids = finished_to_drop(self._jobs.values(), cutoff, keep_max)
            if ids:
                await self._store.call(lambda conn: delete_jobs(conn, ids))
                for job_id in ids:
                    self._jobs.pop(job_id, None)
        return len(ids)

    async def apply_requests(self) -> int:
        """Apply what the local CLI queued in the store; returns how many were applied."""
        return await apply_requests(self, self._store)
