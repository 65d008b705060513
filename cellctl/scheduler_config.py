"""`[scheduler]`: which dispatcher the job service uses, and the live planner's settings.

Kept out of config.py (which only names the section) so the planner's knobs
live beside each other. docs/scheduling.md, "The planner in the live cell".
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
from collections.abc import Collection
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellctl.planning.calendar import Calendar, Shift

PLANNER_METHODS = ("fifo", "group", "greedy", "instant", "anytime")


class DispatchMethod(enum.StrEnum):
    BASELINE = "baseline"  # oldest capable step whose setup is loaded (no changeovers)
    PLANNER = "planner"  # the changeover-minimising planner, re-planned off the event loop


class PlanWorker(enum.StrEnum):
    THREAD = "thread"  # a worker thread: no start-up, but it shares the GIL with the loop
    PROCESS = "process"  # one worker process: the loop keeps the GIL to itself


class KeyChange(BaseModel):
    """How long changing one setup key takes on any device, and whether an operator does it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: int = Field(ge=0)
    manual: bool = True


# Marlin printers (material, nozzle) and GRBL mills (tool, fixture): a config
# without a model still plans. Any other key costs `unknown_key_s`, manual.
DEFAULT_CHANGES = {
    "material": KeyChange(seconds=600),
    "nozzle": KeyChange(seconds=900),
    "tool": KeyChange(seconds=180),
    "fixture": KeyChange(seconds=900),
}


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ShiftConfig(BaseModel):
    """A weekly operator shift, local time: `to` ≤ `from` ends the next day."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    days: tuple[Day, ...] = DAYS
    start: dt.time = Field(alias="from")
    end: dt.time = Field(alias="to")


class DayException(BaseModel):
    """A date whose shifts replace the weekly ones (a holiday: none; overtime: others)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    date: dt.date
    shifts: tuple[ShiftConfig, ...] = ()


class CalendarConfig(BaseModel):
    """`[scheduler.calendar]`: when an operator is there for manual work (docs/scheduling.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str
    shifts: tuple[ShiftConfig, ...] = Field(min_length=1, max_length=100)
    exceptions: tuple[DayException, ...] = Field(default=(), max_length=1000)
    # How far ahead the shifts are laid out for each re-plan.
    horizon_days: int = Field(default=14, ge=1, le=366)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name: Europe/Berlin)") from None
        return v

    def at(self, now: float) -> Calendar:
        """The calendar with problem time 0 at `now` (epoch seconds, whole seconds)."""
        start = dt.datetime.fromtimestamp(int(now), ZoneInfo(self.timezone)).replace(tzinfo=None)
        return Calendar(
            self.timezone,
            start,
            tuple(
                Shift(frozenset(DAYS.index(d) for d in s.days), s.start, s.end) for s in self.shifts
            ),
            tuple((e.date, tuple((s.start, s.end) for s in e.shifts)) for e in self.exceptions),
            self.horizon_days,
        )


class RobotPreparation(BaseModel):
    """`[scheduler.preparation.<key>.robot]`: a robot program run ahead of a manual change
    of the key (fetching the next spool or fixture to the device), as a job step the
    planner plans like any other (robot_prep.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str = Field(min_length=1, max_length=64)  # the robot's program name
    process: str = Field(default="tend", min_length=1, max_length=64)  # who may run it
    estimated_s: float = Field(default=30.0, gt=0)
    reserves: tuple[str, ...] = ()  # devices it holds while it runs (a shared gripper)


class Preparation(BaseModel):
    """`[scheduler.preparation.<key>]`: what a device may do ahead of a manual change of
    this key, idle and waiting for it (a printer heating to the loaded material's unload
    temperature). Sent as maintenance lines (the device idle, its step lock held); only
    while an operator is on shift (`[scheduler.calendar]`); while the device works only
    when `while_working` says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The loaded value (the one to unload) → lines sent ahead: PETG = ["M104 S240"];
    # "*" for any other value.
    ahead: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Sent when the changeover is withdrawn before it was done (a re-plan moved it):
    # "M104 S0", so no heater stays on for a change that is not coming.
    undo: tuple[str, ...] = ()
    # At most this long before the plan's changeover start.
    lead_s: float = Field(default=600.0, ge=0)
    # Also while the device runs a step: the lines go in between the job's own (drivers
    # with `lines_while_working`: Marlin). Off by default: a printer's preheat to the
    # unload temperature sets the temperature of the print running now. Only for lines
    # that leave the running job alone: a second tool's heater (`M104 T1 S240`), a
    # chamber (`M141`).
    while_working: bool = False
    # A robot program run ahead (planned, with its reservations), beside or instead of
    # `ahead`: it never touches the device that works.
    robot: RobotPreparation | None = None

    @model_validator(mode="after")
    def _something_to_do(self) -> Preparation:
        if not self.ahead and self.robot is None:
            raise ValueError("expected `ahead` lines or a `robot` program")
        return self

    @field_validator("ahead")
    @classmethod
    def _lines_present(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        empty = [k for k, lines in v.items() if not lines]
        if empty:
            raise ValueError(f"expected at least one line for {', '.join(empty)}")
        return v

    def lines_for(self, loaded: str | None) -> tuple[str, ...]:
        if loaded is not None:
            for value, lines in self.ahead.items():
                if value.casefold() == loaded.strip().casefold():
                    return lines
        return self.ahead.get("*", ())


class DeviceTemplate(BaseModel):
    """`[scheduler.templates.<name>]`: one changeover model for many alike machines
    (`devices`: ids or shell patterns, `prusa-*`). A device in no template goes by the
    section's own `changeover`, then the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: tuple[str, ...] = Field(min_length=1)
    changeover: dict[str, KeyChange] = Field(default_factory=dict)
    # Setup keys these devices change themselves (driver `change_setup`).
    automatic: tuple[str, ...] = ()
    # Their bed must be confirmed clear after a print with no unload step.
    bed_clearing: bool = False

    def holds(self, device: str) -> bool:
        return any(fnmatch.fnmatchcase(device, p) for p in self.devices)


class DeviceRules(BaseModel):
    """`[scheduler.devices.<id>]`: one device's own changeover times (over its template's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str | None = None  # instead of matching a template's `devices`
    changeover: dict[str, KeyChange] = Field(default_factory=dict)


class SchedulerSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: DispatchMethod = DispatchMethod.PLANNER
    # The pure planner's method for each re-plan (docs/scheduling.md, "Methods").
    planner_method: str = "anytime"
    # Wall-time bound of one re-plan (anytime search), off the event loop.
    budget_s: float = Field(default=0.2, gt=0, le=30)
    # Where re-plans run (docs/scheduling.md, "The planner in the live cell").
    worker: PlanWorker = PlanWorker.THREAD
    # A plan older than this, or one whose re-plan failed, is not followed: dispatch
    # falls back to the baseline rule (never a changeover) until a fresh plan arrives.
    max_plan_age_s: float = Field(default=60.0, gt=0)
    # A step with no estimate is planned as taking this long.
    default_step_s: int = Field(default=600, gt=0)
    # A job without a due date is planned as due at its submission + this many times
    # its step's estimate, so an old job weighs against work that needs no changeover;
    # 0 (the default): no implicit due dates, changeover time alone orders such jobs.
    implicit_due_factor: float = Field(default=0.0, ge=0)
    # A manual changeover is requested this long before the plan needs it.
    notice_s: float = Field(default=900.0, ge=0)
    # Per setup key: its changeover time and who does it (overrides DEFAULT_CHANGES).
    changeover: dict[str, KeyChange] = Field(default_factory=dict)
    unknown_key_s: int = Field(default=600, ge=0)
    # Device id → the setup keys it changes itself through its driver's `change_setup`
    # (a GRBL mill's tool_change_macro): planned as automatic, run with no operator.
    automatic: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Bound of one automatic changeover; past it the change is asked of an operator.
    automatic_timeout_s: float = Field(default=300.0, gt=0)
    # Devices whose bed must be confirmed clear (`answer` kind clear_bed) after a step
    # with no unload step after it, before they take another (any dispatcher).
    bed_clearing: tuple[str, ...] = ()
    # How long clearing a bed takes an operator (the planner plans it after the print).
    bed_clearing_s: int = Field(default=120, ge=0)
    # Changeover models shared by alike machines, and one device's own times: a key's
    # time is the device's, else its template's, else `changeover`'s, else the default.
    templates: dict[str, DeviceTemplate] = Field(default_factory=dict)
    devices: dict[str, DeviceRules] = Field(default_factory=dict)
    # Per setup key: what may run ahead of a manual change of it (preheating).
    preparation: dict[str, Preparation] = Field(default_factory=dict)
    # Operator shifts: manual changeovers and bed clearing are planned inside them.
    # Unset: an operator is assumed always there.
    calendar: CalendarConfig | None = None

    @model_validator(mode="after")
    def _known_method(self) -> SchedulerSection:
        if self.planner_method not in PLANNER_METHODS:
            raise ValueError(
                f"planner_method: expected one of {', '.join(PLANNER_METHODS)}, "
                f"got {self.planner_method!r}"
            )
        return self

    @model_validator(mode="after")
    def _known_templates(self) -> SchedulerSection:
        for dev, rules in self.devices.items():
            if rules.template is not None and rules.template not in self.templates:
                known = ", ".join(sorted(self.templates)) or "none defined"
                raise ValueError(
                    f"devices.{dev}.template: expected a name in [scheduler.templates] "
                    f"({known}), got {rules.template!r}"
                )
        return self

    def device_problems(self, devices: Collection[str]) -> list[str]:
        """What names no configured device, or gives one device two templates; each as
        `scheduler.<key path>: <what was expected>` for `cellctl check`."""
        out = []
        named = {*self.automatic, *self.bed_clearing}
        for d in sorted(d for d in named if d not in devices):
            key = "automatic" if d in self.automatic else "bed_clearing"
            out.append(f"scheduler.{key}: expected a device id in [devices], got {d!r}")
        for d in sorted(d for d in self.devices if d not in devices):
            out.append(f"scheduler.devices.{d}: expected a device id in [devices], got {d!r}")
        for name, t in sorted(self.templates.items()):
            for p in t.devices:
                if not any(fnmatch.fnmatchcase(d, p) for d in devices):
                    out.append(
                        f"scheduler.templates.{name}.devices: {p!r} matches no device in "
                        "[devices] (expected device ids or patterns such as 'prusa-*')"
                    )
        for d in sorted(devices):
            held = [n for n, t in sorted(self.templates.items()) if t.holds(d)]
            if len(held) > 1:
                out.append(
                    f"scheduler.templates: device {d!r} is in {len(held)} templates "
                    f"({', '.join(held)}); expected at most one"
                )
        return out

    def unknown_devices(self, devices: Collection[str]) -> list[str]:
        named = {*self.automatic, *self.bed_clearing}
        return sorted(d for d in named if d not in devices)

    def template_of(self, device: str) -> DeviceTemplate | None:
        rules = self.devices.get(device)
        if rules is not None and rules.template is not None:
            return self.templates[rules.template]
        return next((t for _, t in sorted(self.templates.items()) if t.holds(device)), None)

    def key_change(self, key: str, device: str | None = None) -> KeyChange:
        if device is not None:
            rules = self.devices.get(device)
            own = rules.changeover.get(key) if rules is not None else None
            if own is not None:
                return own
            template = self.template_of(device)
            shared = template.changeover.get(key) if template is not None else None
            if shared is not None:
                return shared
        found = self.changeover.get(key) or DEFAULT_CHANGES.get(key)
        return found if found is not None else KeyChange(seconds=self.unknown_key_s)

    def automatic_keys(self, device: str) -> tuple[str, ...]:
        """The keys the device changes itself: its own `automatic` entry and its template's."""
        template = self.template_of(device)
        shared = template.automatic if template is not None else ()
        return tuple(dict.fromkeys((*self.automatic.get(device, ()), *shared)))

    def clears_bed(self, device: str) -> bool:
        template = self.template_of(device)
        return device in self.bed_clearing or (template is not None and template.bed_clearing)

    def model_fingerprint(self, device: str) -> tuple[object, ...]:
        """Devices with equal fingerprints have equal changeover costs (one table each)."""
        rules = self.devices.get(device)
        return (
            self.automatic_keys(device),
            id(self.template_of(device)),
            tuple(sorted(rules.changeover.items())) if rules is not None else (),
        )

    def on_shift(self, now: float) -> bool:
        """An operator is there now (always, without a calendar)."""
        if self.calendar is None:
            return True
        windows = self.calendar.at(now).windows(1)
        return bool(windows) and windows[0][0] == 0
