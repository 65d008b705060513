"""The live cell as a planning problem: waiting steps, devices and their setups.

Pure: a `Snapshot` (what dispatch saw, at one instant) in, a `Problem` out.
Problem time 0 is the snapshot's instant, in seconds.

- A job of the problem is a step that may start now (its route predecessor
  is done), or a later step of its route (`Snapshot.later`): `after` its
  predecessor when that one is planned too, released at the predecessor's
  expected end when it runs; a later step whose predecessor is not planned
  (held, or no device can run it) is left out, and so is everything after it.
- A step that reserves other devices (a robot tending a printer) holds them
  over its run (`Job.reserves`); `@previous` holds its predecessor's machine
  from that one's end. A step reserving a device that is down, or kept for
  another step, is left out.
- A machine is a device that is free, or busy with a step (free again at the
  step's remaining estimate); a device that is down or out of service is
  left out, and so is a step that only such devices can run.
- A setup label holds only the keys some waiting step asks for. A step asks
  for some keys (`material=PETG`); changing to it changes only those, and
  costs the sum of their times on that device (`[scheduler.devices.<id>]`,
  its template `[scheduler.templates.<name>]`, `[scheduler.changeover.<key>]`,
  the defaults), manual if any of them is. Keys it does not name cost nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from cellctl.jobs.dispatch import Candidate, DeviceView
from cellctl.jobs.setup_labels import label, parse_label
from cellctl.planning.model import PREVIOUS, Job, Machine, Objective, Problem
from cellctl.scheduler_config import SchedulerSection


@dataclass(frozen=True)
class Snapshot:
    now: float  # epoch seconds
    candidates: tuple[Candidate, ...]
    devices: Mapping[str, DeviceView]
    # Device → step keys that open its sequence (changeovers already announced).
    pinned: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Later route steps, planned ahead but not started (`Candidate.after`/`ready_at`),
    # in route order (a step after its predecessor).
    later: tuple[Candidate, ...] = ()


def change_cost(
    cfg: SchedulerSection,
    a: str,
    b: str,
    automatic: Collection[str] = (),
    device: str | None = None,
) -> tuple[int, bool]:
    """(seconds, manual) to go from setup label a to b on `device` (its own times, its
    template's, or the section's): the keys b names that differ. A key in `automatic`
    the device changes itself (its driver's `change_setup`)."""
    have, need = parse_label(a), parse_label(b)
    total, manual = 0, False
    for key, value in need.items():
        if have.get(key) == value:
            continue
        rule = cfg.key_change(key, device)
        total += rule.seconds
        manual = manual or (rule.manual and key not in automatic)
    return total, manual


def build_problem(snap: Snapshot, cfg: SchedulerSection) -> Problem:
    machines: list[Machine] = []
    keys = sorted({k for c in (*snap.candidates, *snap.later) for k in c.setup})
    for dev_id, v in sorted(snap.devices.items()):
        if v.free:
            free_at = 0
        elif v.busy_until is not None:
            free_at = max(0, int(v.busy_until - snap.now))
        else:
            continue
        loaded = {k: v.setup[k] for k in keys if k in v.setup}
        machines.append(Machine(dev_id, label(loaded), free_at))
    mids = {m.id for m in machines}
    jobs: list[Job] = []
    placed: set[str] = set()
    for c in (*snap.candidates, *snap.later):
        job = _job(snap, cfg, c, mids, placed)
        if job is not None:
            jobs.append(job)
            placed.add(job.id)
    labels = {m.initial_setup for m in machines} | {j.setup for j in jobs}
    setup_times: dict[str, dict[str, dict[str, int]]] = {}
    manual: set[tuple[str, str, str]] = set()
    # Alike machines (one template, no own times) share one table.
    by_model: dict[tuple[object, ...], dict[tuple[str, str], tuple[int, bool]]] = {}
    for m in machines:
        model = cfg.model_fingerprint(m.id)
        costs = by_model.get(model)
        if costs is None:
            auto = cfg.automatic_keys(m.id)
            costs = {
                (a, b): change_cost(cfg, a, b, auto, m.id) for a in labels for b in labels if a != b
            }
            by_model[model] = costs
        table = setup_times.setdefault(m.id, {})
        for (a, b), (t, is_manual) in costs.items():
            table.setdefault(a, {})[b] = t
            if is_manual and t:
                manual.add((m.id, a, b))
    pinned = {
        d: tuple(k for k in keys_ if k in placed and k in _capable(jobs, d))
        for d, keys_ in snap.pinned.items()
        if d in mids
    }
    shifts = None if cfg.calendar is None else cfg.calendar.at(snap.now).windows(1)
    return Problem(
        objective=Objective.WEIGHTED_TARDINESS,
        machines=tuple(machines),
        setup_times=setup_times,
        jobs=tuple(jobs),
        time_unit="s",
        manual=frozenset(manual),
        shifts=shifts,
        pinned={d: ks for d, ks in pinned.items() if ks},
    )


def _job(
    snap: Snapshot, cfg: SchedulerSection, c: Candidate, mids: set[str], placed: set[str]
) -> Job | None:
    """The step as a job of the problem, or None when it cannot be planned now."""
    after: tuple[str, ...] = ()
    release = 0
    if c.after is not None:
        if c.after in placed:
            after = (c.after,)
        elif c.ready_at is not None:
            release = max(0, int(c.ready_at - snap.now))
        else:
            return None
    for r in c.reserves:
        if r == PREVIOUS:
            if not after:
                return None
            continue
        if r not in mids or snap.devices[r].kept_for not in (None, c.key):
            return None
    est = max(1, int(c.estimated_s)) if c.estimated_s else cfg.default_step_s
    durations = {
        d: est
        for d in mids
        if c.process in snap.devices[d].processes
        and c.only_on in (None, d)
        and snap.devices[d].kept_for in (None, c.key)
        and d not in c.reserves
    }
    if not durations:
        return None
    due = None if c.due is None else int(c.due - snap.now)
    if due is None and c.submitted is not None and cfg.implicit_due_factor > 0:
        due = int(c.submitted + cfg.implicit_due_factor * est - snap.now)
    return Job(
        id=c.key,
        setup=label(c.setup),
        durations=durations,
        release=release,
        due=due,
        weight=1 + max(0, c.priority),
        after=after,
        clear=c.clear_s,
        reserves=tuple(c.reserves),
    )


def _capable(jobs: list[Job], device: str) -> set[str]:
    return {j.id for j in jobs if device in j.durations}
