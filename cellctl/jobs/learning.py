"""The job service's memory of how long things took: changeovers and steps, stored
(table `measured`, migration 0008) and turned into the planner's estimates.

- A changeover asked of an operator is measured from its request (or from when
  the device was to be free, if later: an operator cannot change a busy printer)
  to the setup being recorded (`cellctl changeover`, `answer` with setup{});
  an automatic one, through the driver's `change_setup`, from start to return.
- A step that ended done is measured from its start to its end, beside its
  estimate (the slicer's or the job's), for the device's speed.
- Estimates (cellctl/planning/learned.py): per device and from→to pair of the
  keys that changed, a trimmed mean of the recent ones; per device, the median of
  actual ÷ estimated. `LearnedTimes.apply` puts them into each problem the
  planner plans (the planner calls it on its worker: it is plain, picklable data).

Rows written by a task of the job service's TaskGroup (`run`), in order; the
measurements are kept in memory first, so a store that is briefly unwritable
costs estimates nothing.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from cellctl.jobs.setup_labels import label, norm, parse_label
from cellctl.model import OperatorRequest, RequestKind, StepChanged, StepState
from cellctl.planning.learned import Learned
from cellctl.store import StoreError, transaction

if TYPE_CHECKING:
    from cellctl.jobs.records import StepRecord
    from cellctl.planning.model import Problem
    from cellctl.scheduler_config import SchedulerSection
    from cellctl.store import Store

log = structlog.get_logger("cellctl.jobs.learning")

WINDOW = 20  # recent measurements an estimate uses
HISTORY = 2000  # rows read back at start (the newest)


def change_pair(before: Mapping[str, str], load: Mapping[str, str]) -> tuple[str, str]:
    """(from, to) labels over the keys `load` changes; a key not loaded before is ''."""
    keys = [k for k in load if norm(before.get(k, "")) != norm(load[k])]
    return label({k: before.get(k, "") for k in keys}), label({k: load[k] for k in keys})


@dataclass(frozen=True)
class LearnedTimes:
    """The estimates a problem gets: changeovers per (device, from, to) over the
    changed keys, in seconds; a speed factor per device (actual ÷ estimated)."""

    changeovers: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    speed: Mapping[str, float] = field(default_factory=dict)

    def apply(self, problem: Problem) -> Problem:
        if not self.changeovers and not self.speed:
            return problem
        times: dict[str, dict[str, dict[str, int]]] = {}
        for m, rows in problem.setup_times.items():
            times[m] = {}
            for a, row in rows.items():
                have = parse_label(a)
                out: dict[str, int] = {}
                for b, t in row.items():
                    pair = change_pair(have, parse_label(b))
                    learned = self.changeovers.get((m, *pair))
                    out[b] = t if learned is None or not pair[1] else max(0, round(learned))
                times[m][a] = out
        jobs = tuple(
            replace(
                j,
                durations={
                    d: max(1, round(t * self.speed.get(d, 1.0))) for d, t in j.durations.items()
                },
            )
            for j in problem.jobs
        )
        return replace(problem, setup_times=times, jobs=jobs)


def configured_s(sched: SchedulerSection, to: str) -> float:
    """The configured time of a change to the keys of label `to` (their sum)."""
    return float(sum(sched.key_change(k).seconds for k in parse_label(to)))


def compare(learned: Learned, sched: SchedulerSection) -> dict[str, Any]:
    """Configured vs learned, for `cellctl check` and the published plan: every pair
    measured (learned once it has enough measurements) and every device's speed."""
    changes = []
    for device, a, b in learned.pairs():
        conf = configured_s(sched, b)
        est = learned.changeover(device, a, b, conf)
        changes.append(
            {
                "device": device,
                "change": f"{a or '(none)'} → {b}",
                "configured_s": conf,
                "learned_s": round(est.value, 3) if est.learned else None,
                "samples": est.samples,
            }
        )
    speed = {}
    for device in learned.devices():
        sp = learned.speed(device)
        speed[device] = {"factor": round(sp.value, 4) if sp.learned else None, "steps": sp.samples}
    return {"changeovers": changes, "speed": speed}


def history_rows(conn: Any) -> list[tuple[str, str, str, str, float | None, float]]:
    """The newest measurements, oldest first (for `Learning.run` and `cellctl check`)."""
    return _read_history(conn)


def learned_from(rows: list[tuple[str, str, str, str, float | None, float]]) -> Learned:
    learned = Learned(window=WINDOW)
    for kind, device, a, b, est, seconds in rows:
        if kind == "changeover":
            learned.changeover_done(device, a, b, seconds)
        else:
            learned.step_done(device, est, seconds)
    return learned


@dataclass
class _Asked:
    at: float  # when the measurement starts
    before: dict[str, str]
    load: dict[str, str]
    step: str | None


class Learning:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.learned = Learned(window=WINDOW)
        self._asked: dict[str, _Asked] = {}  # device → its open changeover request
        self._rows: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self.loaded = asyncio.Event()
        self.times = LearnedTimes()
        self.changeovers_measured = 0

    # --- what the job service tells it (on the event loop, never waits) -------------

    def saw(self, event: object, step_of: Callable[[str, int], StepRecord | None]) -> None:
        """Every event the job service publishes; `step_of(job, index)`: its step now."""
        if isinstance(event, OperatorRequest) and event.kind == RequestKind.CHANGEOVER:
            d = event.details or {}
            if d.get("withdrawn"):
                self._asked.pop(event.device_id, None)
                return
            load = {str(k): str(v) for k, v in (d.get("load") or {}).items()}
            unload = {str(k): str(v) for k, v in (d.get("unload") or {}).items()}
            old = self._asked.get(event.device_id)
            if old is not None and old.load == load:
                return  # the same request, its times moved: it was asked at the first
            free_at = d.get("device_free_at")
            start = event.timestamp
            if isinstance(free_at, int | float):
                start = max(start, min(float(free_at), time.time()))
            self._asked[event.device_id] = _Asked(start, unload, load, event.step_key)
        elif isinstance(event, StepChanged) and event.state == StepState.DONE:
            step = step_of(event.job_id, event.index)
            if step is None or step.started is None or step.ended is None:
                return
            actual = step.ended - step.started
            device = event.device_id or step.device
            if device and actual > 0:
                self._step(device, step.key, step.estimated_s, actual, step.ended)

    def setup_recorded(self, device: str, setup: Mapping[str, str], now: float) -> None:
        """A setup was recorded: the open request it meets is measured."""
        asked = self._asked.get(device)
        if asked is None or any(norm(setup.get(k, "")) != norm(v) for k, v in asked.load.items()):
            return
        self._asked.pop(device)
        pair = change_pair(asked.before, asked.load)
        self._changeover(device, pair, max(0.0, now - asked.at), False, asked.step, now)

    def automatic_done(
        self, device: str, before: Mapping[str, str], load: Mapping[str, str], seconds: float
    ) -> None:
        self._changeover(device, change_pair(before, load), seconds, True, None, time.time())

    # --- estimates ------------------------------------------------------------------

    def _changeover(
        self,
        device: str,
        pair: tuple[str, str],
        seconds: float,
        automatic: bool,
        step: str | None,
        at: float,
    ) -> None:
        if not pair[1]:
            return
        self.learned.changeover_done(device, *pair, seconds)
        self.changeovers_measured += 1
        self._rows.append(("changeover", device, *pair, int(automatic), step, None, seconds, at))
        self._refresh()
        log.info("changeover measured", device=device, change=f"{pair[0]} → {pair[1]}", s=seconds)

    def _step(self, device: str, key: str, est: float | None, actual: float, at: float) -> None:
        self.learned.step_done(device, est, actual)
        self._rows.append(("step", device, "", "", 0, key, est, actual, at))
        self._refresh()

    def compare(self, sched: SchedulerSection) -> dict[str, Any]:
        return compare(self.learned, sched)

    def _refresh(self) -> None:
        ch = {}
        for pair in self.learned.pairs():
            e = self.learned.changeover(*pair, configured=-1.0)
            if e.learned:
                ch[pair] = e.value
        speed = {}
        for device in self.learned.devices():
            s = self.learned.speed(device)
            if s.learned:
                speed[device] = s.value
        self.times = LearnedTimes(ch, speed)
        self._wake.set()

    # --- the store --------------------------------------------------------------------

    async def run(self) -> None:
        """Read the history, then write new measurements as they come; until cancelled."""
        rows = await self._store.call(_read_history)
        for kind, device, a, b, est, seconds in rows:
            if kind == "changeover":
                self.learned.changeover_done(device, a, b, seconds)
            else:
                self.learned.step_done(device, est, seconds)
        self._refresh()
        self.loaded.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, self._rows = self._rows, []
            if not rows:
                continue
            try:
                await self._store.call(functools.partial(_write, rows=rows))
            except StoreError as exc:  # the estimates are kept anyway; rows are lost
                log.error("cannot store measured durations", error=str(exc))


def _read_history(conn: Any) -> list[tuple[str, str, str, str, float | None, float]]:
    cur = conn.execute(
        "SELECT kind, device, from_setup, to_setup, estimated_s, seconds FROM measured "
        "ORDER BY id DESC LIMIT ?",
        (HISTORY,),
    )
    return list(reversed(cur.fetchall()))


def _write(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO measured (kind, device, from_setup, to_setup, automatic, step_key, "
            "estimated_s, seconds, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
