"""The planner as the live dispatcher: re-planned off the event loop, followed on it.

`PlannerDispatcher.assign` runs on the event loop and only reads: it places,
on each free device, the next step of that device's sequence in the latest
plan when its setup is loaded; a device whose next planned step needs another
setup waits for its changeover (announced by `changeover.Announcer`). Every
call also notes the problem it saw; when that differs from the one last
planned, a snapshot goes to the planning slot (one slot: latest wins) and
`run` (a task of the job service's TaskGroup) plans it on a worker thread
within `[scheduler] budget_s`.

A plan older than `max_plan_age_s`, or a re-plan that raised, is not
followed: dispatch falls back to `BaselineDispatcher` (which never needs a
changeover) and says so in the log, once per change. Steps the plan does not
hold (arrived after it) go to devices with nothing planned left, by the
baseline rule.

The plan holds whole routes: the service tells `note_later` the later steps
of each route (not startable yet), so a device whose next planned step is one
of them waits for it, and its changeover is asked for ahead like any other.
Steps that reserve other devices (a robot tending a printer) are planned with
their reservations; one starts only when every device it reserves is free.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import structlog

from cellctl import planning
from cellctl.jobs.changeover import Announcer, Needed
from cellctl.jobs.dispatch import (
    Assignment,
    BaselineDispatcher,
    Candidate,
    DeviceView,
    can_run,
    spool_short,
    unmet,
    usable,
)
from cellctl.jobs.live_problem import Snapshot, build_problem
from cellctl.jobs.preparation import PrepAction, Preparer
from cellctl.model import OperatorRequest
from cellctl.planning.model import Assignment as PlanAssignment
from cellctl.planning.model import Figures, Plan, Problem
from cellctl.scheduler_config import PlanWorker, SchedulerSection

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = structlog.get_logger("cellctl.jobs.planner")


@dataclass(frozen=True)
class LivePlan:
    plan: Plan
    made_at: float  # epoch seconds: problem time 0
    planned: frozenset[str]  # step keys it holds
    by_job: Mapping[str, PlanAssignment]  # step key → its place in the plan
    problem: Problem | None = None  # what was planned: published with the plan (plan_feed.py)
    # The announced changeovers its snapshot saw (`Announcer.pins`); None: not known.
    pins: Mapping[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class AutoChange:
    device: str
    step_key: str
    setup: Mapping[str, str]  # the keys to change, to these values


@dataclass
class PlannerStats:
    plans: int = 0
    failures: int = 0
    fallbacks: int = 0  # dispatch rounds decided by the baseline rule
    last_error: str = ""
    plan_s: list[float] = field(default_factory=list)


class PlannerDispatcher:
    """The job service asks it every round, with busy devices too (changeovers ahead
    of time), and runs `run` in its TaskGroup."""

    def __init__(
        self,
        settings: Callable[[], SchedulerSection],
        *,
        on_plan: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._on_plan = on_plan
        self._clock = clock
        self._baseline = BaselineDispatcher()
        self.announcer = Announcer()
        self.preparer = Preparer()
        self.current: LivePlan | None = None
        self.stats = PlannerStats()
        self._pending: Snapshot | None = None
        self._dirty = asyncio.Event()
        self._seen: object = None
        self._seen_at = 0.0
        self._failed = False
        self._fallback_said = False
        self._automatic: list[AutoChange] = []
        self._later: tuple[Candidate, ...] = ()
        self.auto_failed: dict[str, str] = {}  # device → why its change_setup failed
        # Applied to each problem before planning (learned durations, learned_times.py);
        # picklable: it travels to the worker process with the snapshot.
        self.adjust: ProblemAdjust | None = None

    # --- on the event loop -------------------------------------------------------

    def note_later(self, later: Sequence[Candidate]) -> None:
        """The later steps of the routes (each with `after` or `ready_at`), in route
        order: planned ahead with the next `assign`, never started by it."""
        self._later = tuple(later)

    def assign(
        self, candidates: Sequence[Candidate], devices: Mapping[str, DeviceView]
    ) -> list[Assignment]:
        now = self._clock()
        cfg = self._settings()
        self._note(candidates, devices, now, cfg)
        live = self.current
        if live is None or self._failed or now - live.made_at > cfg.max_plan_age_s:
            self._say_fallback(live, now)
            self.announcer.update({}, now)  # nothing is asked for without a plan to follow
            self.stats.fallbacks += 1
            return self._baseline.assign(candidates, devices)
        if self._fallback_said:
            log.info("planner: following the plan again")
            self._fallback_said = False
        by_key = {c.key: c for c in candidates}
        free = {d for d, v in devices.items() if v.free}
        out: list[Assignment] = []
        needed: dict[str, Needed] = {}
        met: set[tuple[str, str]] = set()
        idle: list[str] = []  # free devices with nothing planned left
        later = {c.key: c for c in self._later}
        for dev_id in sorted(devices):
            view = devices[dev_id]
            nxt = next(
                (
                    by_key.get(k) or later[k]
                    for k in live.plan.sequences.get(dev_id, ())
                    if k in by_key or k in later
                ),
                None,
            )
            if nxt is None:
                if dev_id in free:
                    idle.append(dev_id)
                continue
            short = spool_short(view.setup, nxt)
            if unmet(view.setup, nxt.setup) or short is not None:
                a = live.by_job[nxt.key]
                need = Needed(
                    device=dev_id,
                    step=nxt,
                    loaded=dict(view.setup),
                    planned_start=live.made_at + a.start,
                    changeover_start=live.made_at + a.changeover_start,
                    device_free_at=now if view.free else view.busy_until,
                    spool_g=short,
                )
                auto = set(cfg.automatic_keys(dev_id)) if dev_id not in self.auto_failed else set()
                if not set(need.load) <= auto:
                    needed[dev_id] = need
                elif (
                    dev_id in free
                    and view.kept_for in (None, nxt.key)
                    and (nxt.key in by_key or need.changeover_start <= now)
                ):
                    self._automatic.append(AutoChange(dev_id, nxt.key, need.load))
                    free.discard(dev_id)
                continue
            met.add((dev_id, nxt.key))
            if nxt.key not in by_key:
                continue  # a later route step: the device waits for it, as planned
            if dev_id not in free or not can_run(view, nxt):
                continue
            if any(
                r == dev_id or r not in free or not usable(devices[r], nxt) for r in nxt.reserves
            ):
                continue
            out.append(Assignment(nxt.key, dev_id, nxt.reserves))
            free.discard(dev_id)
            free.difference_update(nxt.reserves)
        # Requests follow only a plan made for the requests standing now. A plan from a
        # snapshot taken before the last change of requests (planned while they changed)
        # pinned the old ones; followed, it moved them back, the next plan (pinning
        # those) moved them again: two printers swapped their requests every round, and
        # the mill flapped after an answer (the demo mix, issue 20). The plan made for
        # the current requests is queued already (`_note` saw them change).
        if live.pins is None or dict(live.pins) == self.announcer.pins():
            # A request once made stays while the plan still needs it, also when a
            # re-plan moves it back out of the notice window (else it is withdrawn and
            # asked again).
            self.announcer.update(
                {
                    d: n
                    for d, n in needed.items()
                    if n.due_for_notice(now, cfg.notice_s) or self.announcer.asked(d, n)
                },
                now,
                met,
            )
            self.preparer.update(needed, free, met, now, cfg)
        rest = [d for d in idle if d in free]
        unplanned = [c for c in candidates if c.key not in live.planned] if rest else []
        if unplanned:
            taken = {d for a in out for d in (a.device, *a.reserves)}
            views = {d: v if d in rest and d not in taken else _busy(v) for d, v in devices.items()}
            out.extend(self._baseline.assign(unplanned, views))
        return out

    def take_automatic(self) -> list[AutoChange]:
        """Automatic changeovers to run now (the service runs each through the driver's
        `change_setup` and records the setup once it returned)."""
        out, self._automatic = self._automatic, []
        return out

    def automatic_failed(self, device: str, reason: str) -> None:
        """The device could not change its own setup: ask an operator from now on."""
        self.auto_failed[device] = reason
        self._seen = None  # re-plan: the request comes from the next plan followed

    def take_preparations(self) -> list[PrepAction]:
        """Preparation lines to send now (`preparation.Preparer`), each to an idle device."""
        return self.preparer.take()

    def take_requests(self) -> list[OperatorRequest]:
        """Changeover requests (new, changed, withdrawn) for the service to publish."""
        return self.announcer.take()

    def waiting_reasons(self) -> dict[str, str]:
        """Step key → why it waits (its changeover), for the step's stored reason."""
        return self.announcer.reasons()

    def _note(
        self,
        candidates: Sequence[Candidate],
        devices: Mapping[str, DeviceView],
        now: float,
        cfg: SchedulerSection,
    ) -> None:
        """Queue a re-plan when the problem changed (or the plan is getting old)."""
        seen = (
            frozenset((c.key, c.priority) for c in candidates),  # a new priority re-plans
            tuple(
                (d, tuple(sorted(v.setup.items())), v.free, v.busy_until is not None, v.kept_for)
                for d, v in sorted(devices.items())
            ),
            frozenset(self.announcer.pins().items()),
            tuple((c.key, c.priority, c.after, c.ready_at, c.reserves) for c in self._later),
        )
        if seen == self._seen and now - self._seen_at < cfg.max_plan_age_s / 2:
            return
        self._seen, self._seen_at = seen, now
        self._pending = Snapshot(
            now=now,
            candidates=tuple(candidates),
            devices=dict(devices),
            pinned=self.announcer.pins(),
            later=self._later,
        )
        self._dirty.set()

    def _say_fallback(self, live: LivePlan | None, now: float) -> None:
        if self._fallback_said:
            return
        self._fallback_said = True
        if self._failed:
            why = f"the last re-plan failed: {self.stats.last_error}"
        elif live is None:
            why = "no plan yet"
        else:
            why = f"the plan is {now - live.made_at:.0f} s old"
        log.warning("planner: dispatching by the baseline rule", reason=why)

    # --- the planning task -------------------------------------------------------

    async def run(self) -> None:
        """Plan the latest snapshot, one at a time, off the loop; until cancelled.

        The process pool and the solver are imported with the first use, not with the
        daemon: an idle cell pays for neither (issue 27)."""
        pool: ProcessPoolExecutor | None = None
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                snap, self._pending = self._pending, None
                if snap is None:
                    continue
                cfg = self._settings()
                if cfg.worker is PlanWorker.PROCESS and pool is None:
                    import multiprocessing
                    from concurrent.futures import ProcessPoolExecutor

                    pool = ProcessPoolExecutor(
                        1,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_exit_with_parent,
                        initargs=(os.getpid(),),
                    )
                try:
                    await self._replan(
                        snap, cfg, pool if cfg.worker is PlanWorker.PROCESS else None
                    )
                except Exception:  # only a BrokenProcessPool leaves _replan
                    pool = None  # the worker died (killed, out of memory): a new one next time
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _replan(
        self, snap: Snapshot, cfg: SchedulerSection, pool: ProcessPoolExecutor | None
    ) -> None:
        """One re-plan; a failure is logged and counted, and dispatch falls back."""
        t0 = time.perf_counter()
        try:
            if pool is None:
                live = await asyncio.to_thread(_plan_snapshot, snap, cfg, self.adjust)
            else:
                loop = asyncio.get_running_loop()
                live = await loop.run_in_executor(pool, _plan_snapshot, snap, cfg, self.adjust)
        except Exception as exc:  # a planner bug must not stop dispatch: fall back
            self._failed = True
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("planner: re-plan failed", error=self.stats.last_error)
            self._fallback_said = False
            self._on_plan()
            if type(exc).__name__ == "BrokenProcessPool":
                raise  # run() starts a new worker
            return
        self._failed = False
        self.current = live
        log.debug("planner: plan", sequences={d: list(v) for d, v in live.plan.sequences.items()})
        self.stats.plans += 1
        self.stats.plan_s.append(time.perf_counter() - t0)
        del self.stats.plan_s[:-100]
        self._on_plan()


# Moving an announced changeover must gain this fraction of the kept plan's figure, and at
# least MOVE_MIN_S: the pinned and the free problem are planned apart, and a heuristic (or
# a search bounded in time) can find each better than the other on alternate re-plans.
# Without a margin the requests swapped back and forth every round (the demo's mix:
# hundreds of request/withdraw pairs in a few seconds).
MOVE_MARGIN = 0.1
MOVE_MIN_S = 60


def _nothing(problem: Problem) -> Figures:
    return Figures(problem.objective, weighted_tardiness=0, changeover=0, makespan=0)


def _clearly_better(free: tuple[int, ...], kept: tuple[int, ...]) -> bool:
    """(weighted tardiness, changeover, …): less tardiness by the margin; or no more
    tardiness (within the margin) and less changeover time by the margin."""
    (ft, fc), (kt, kc) = free[:2], kept[:2]
    if ft < kt - max(MOVE_MIN_S, MOVE_MARGIN * kt):
        return True
    return ft <= kt and fc < kc - max(MOVE_MIN_S, MOVE_MARGIN * kc)


def _exit_with_parent(parent: int) -> None:
    """In the worker process: end when the daemon is gone (a SIGKILL leaves no one to
    shut the pool down, and the worker would wait for work forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _busy(v: DeviceView) -> DeviceView:
    return DeviceView(v.id, v.processes, v.setup, False, v.kept_for, v.busy_until)


class ProblemAdjust(Protocol):
    def apply(self, problem: Problem) -> Problem: ...


def _plan_snapshot(
    snap: Snapshot, cfg: SchedulerSection, adjust: ProblemAdjust | None = None
) -> LivePlan:
    """Plan the snapshot. A changeover already requested stays where it is unless a plan
    free to move it is clearly better (`_clearly_better`; not merely an earlier end): a
    request does not flap between devices on a tie, nor on the planner's own noise."""
    problem = build_problem(snap, cfg)
    if adjust is not None:
        problem = adjust.apply(problem)
    method = cfg.planner_method
    budget = cfg.budget_s if method == "anytime" else None
    if not problem.jobs:
        # Nothing to place: an idle cell does not load the solver (issue 27).
        result = Plan({m.id: () for m in problem.machines}, (), _nothing(problem), method)
    elif problem.pinned:
        half = None if budget is None else budget / 2
        kept = planning.plan(problem, method, budget_s=half)
        free = planning.plan(replace(problem, pinned={}), method, budget_s=half)
        result = free if _clearly_better(free.figures.key, kept.figures.key) else kept
    else:
        result = planning.plan(problem, method, budget_s=budget)
    return LivePlan(
        result,
        snap.now,
        frozenset(j.id for j in problem.jobs),
        {a.job: a for a in result.assignments},
        problem,
        dict(snap.pinned),
    )
