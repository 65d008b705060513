"""The dispatch decision, behind one small interface.

The job service gathers the steps that may start now (`Candidate`) and the
devices with what they can do and what is loaded (`DeviceView`), asks a
`Dispatcher` which steps go where, and checks the answer against the rules
(`check_assignments`) before it starts anything. The changeover-minimising
planner replaces `BaselineDispatcher` by implementing the same `assign`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cellctl.errors import CellError
from cellctl.scheduler_config import DispatchMethod, SchedulerSection


@dataclass(frozen=True)
class Candidate:
    """A step that may start now: its route predecessor is done and it is queued."""

    key: str  # "<job>/<index>"
    job_id: str
    index: int
    seq: int  # the job's acceptance order: smaller is older
    priority: int  # larger is more urgent
    process: str
    setup: Mapping[str, str]  # requirements
    reserves: tuple[str, ...] = ()  # devices held besides the one that runs it (resolved)
    estimated_s: float | None = None
    due: float | None = None
    only_on: str | None = None  # a step resuming part-way runs where it started
    clear_s: int = 0  # operator time to clear the bed after it (the planner's `clear`)
    filament_g: float | None = None  # grams of filament it takes off the spool
    submitted: float | None = None  # when its job was accepted (epoch seconds)
    # Only on a later route step (`PlannerDispatcher.note_later`: planned ahead, never
    # started): the earlier step it waits for when that one is queued too, or, when
    # that one runs, its expected end (epoch seconds). Its `reserves` may still hold
    # `@previous` (the earlier step's device is not known yet).
    after: str | None = None
    ready_at: float | None = None

    @property
    def order(self) -> tuple[int, int, int]:
        return (-self.priority, self.seq, self.index)


@dataclass(frozen=True)
class DeviceView:
    id: str
    processes: frozenset[str]
    setup: Mapping[str, str]  # what is loaded now
    free: bool  # connected, idle, in service, running and reserved by nothing
    # Kept for one step: the next step of a unit that reserves `@previous`, or a step
    # held part-way on it. Only that step may use (run on or reserve) the device.
    kept_for: str | None = None
    # Busy (engaged) devices: when the running step is expected to end (epoch seconds);
    # None for a free device or one that is down. The live planner plans past it.
    busy_until: float | None = None


def usable(device: DeviceView, c: Candidate) -> bool:
    return device.free and device.kept_for in (None, c.key)


@dataclass(frozen=True)
class Assignment:
    key: str
    device: str
    reserves: tuple[str, ...] = ()


class Dispatcher(Protocol):
    def assign(
        self, candidates: Sequence[Candidate], devices: Mapping[str, DeviceView]
    ) -> list[Assignment]:
        """Which candidates start now, and where. Must obey `check_assignments`."""
        ...


class DispatchViolation(CellError):
    """A dispatcher proposed something the rules forbid (a bug in the dispatcher)."""


def _same(have: str, need: str) -> bool:
    if have.strip().casefold() == need.strip().casefold():
        return True
    try:
        return abs(float(have) - float(need)) < 1e-6
    except ValueError:
        return False


def unmet(have: Mapping[str, str], need: Mapping[str, str]) -> list[str]:
    """Each requirement the loaded setup does not meet, as `key: need X, loaded Y`."""
    out = []
    for key, value in need.items():
        loaded = have.get(key)
        if loaded is None:
            out.append(f"{key}: needs {value}, nothing loaded")
        elif not _same(loaded, value):
            out.append(f"{key}: needs {value}, loaded {loaded}")
    return out


# The setup key holding the grams left on a printer's spool (counted down per print).
SPOOL_KEY = "spool_g"


def spool_short(have: Mapping[str, str], c: Candidate) -> float | None:
    """The grams the step needs when the loaded spool holds less; None when it holds
    enough or is not counted (no `spool_g` in the setup, or the file does not say)."""
    left = have.get(SPOOL_KEY)
    if c.filament_g is None or left is None:
        return None
    try:
        grams = float(left)
    except ValueError:
        return None
    return c.filament_g if grams < c.filament_g else None


def can_run(device: DeviceView, c: Candidate) -> bool:
    return (
        usable(device, c)
        and c.only_on in (None, device.id)
        and c.process in device.processes
        and not unmet(device.setup, c.setup)
        and spool_short(device.setup, c) is None
    )


class BaselineDispatcher:
    """Each free device takes the oldest highest-priority step it can run now."""

    def assign(
        self, candidates: Sequence[Candidate], devices: Mapping[str, DeviceView]
    ) -> list[Assignment]:
        free = {d.id for d in devices.values() if d.free}
        ordered = sorted(candidates, key=lambda c: c.order)
        taken: set[str] = set()
        out: list[Assignment] = []
        for dev_id in sorted(free):
            if dev_id not in free:  # reserved by an earlier assignment in this round
                continue
            device = devices[dev_id]
            for c in ordered:
                if c.key in taken or not can_run(device, c):
                    continue
                if any(
                    r == dev_id or r not in free or not usable(devices[r], c) for r in c.reserves
                ):
                    continue
                out.append(Assignment(c.key, dev_id, c.reserves))
                taken.add(c.key)
                free.discard(dev_id)
                free.difference_update(c.reserves)
                break
        return out


def check_assignments(
    assignments: Sequence[Assignment],
    candidates: Mapping[str, Candidate],
    devices: Mapping[str, DeviceView],
) -> None:
    """Raise DispatchViolation unless every assignment is allowed and none overlap."""
    engaged: set[str] = set()
    keys: set[str] = set()
    for a in assignments:
        c = candidates.get(a.key)
        if c is None:
            raise DispatchViolation(f"{a.key} is not a step that may start now")
        if a.key in keys:
            raise DispatchViolation(f"{a.key} was assigned twice")
        keys.add(a.key)
        device = devices.get(a.device)
        if device is None or not device.free:
            raise DispatchViolation(f"{a.key}: device {a.device} is not free")
        if c.process not in device.processes:
            raise DispatchViolation(f"{a.key}: device {a.device} cannot do {c.process!r}")
        if c.only_on not in (None, a.device):
            raise DispatchViolation(f"{a.key}: must run on {c.only_on}, not {a.device}")
        missing = unmet(device.setup, c.setup)
        short = spool_short(device.setup, c)
        if short is not None:
            missing.append(f"{SPOOL_KEY}: needs {short:g} g, loaded {device.setup[SPOOL_KEY]}")
        if missing:
            raise DispatchViolation(f"{a.key}: device {a.device}: " + "; ".join(missing))
        if tuple(a.reserves) != tuple(c.reserves):
            raise DispatchViolation(f"{a.key}: reserves {a.reserves}, the step needs {c.reserves}")
        for d in (a.device, *a.reserves):
            if d in engaged or not (d in devices and usable(devices[d], c)):
                raise DispatchViolation(f"{a.key}: device {d} is not free or used twice")
            engaged.add(d)


def make_dispatcher(
    settings: Callable[[], SchedulerSection], on_plan: Callable[[], None]
) -> Dispatcher:
    """The dispatcher `[scheduler] method` names (chosen once, at the service's start).
    The planner is imported only here, when a cell plans: its imports cost ~9 MiB."""
    if settings().method is DispatchMethod.PLANNER:
        from cellctl.jobs.planned import PlannerDispatcher

        return PlannerDispatcher(settings, on_plan=on_plan)
    return BaselineDispatcher()
