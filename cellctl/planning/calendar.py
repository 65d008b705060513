"""Operator shifts: when manual work (a manual changeover, clearing a bed) can happen.

A calendar is given in local time with a named time zone: weekly shifts
(weekdays, from, to; `to` ≤ `from` crosses midnight) and dated exceptions
that replace a day's shifts (a holiday: none; overtime: other hours). It is
expanded once, at parse time, into operator windows in the problem's own
time: [start, end) intervals counted from the calendar's `start`, through
UTC, so a shift on a daylight-saving day is as long as the clock says (an
8-hour night shift over the autumn change is 9 real hours). Windows that
touch are merged: a shift handover does not interrupt manual work.

Manual work never pauses: each manual changeover and each bed clearing lies
within one window (`fit`). Automatic changeovers ignore the calendar.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

UTC = dt.UTC


@dataclass(frozen=True)
class Shift:
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time  # <= start: ends the next day


@dataclass(frozen=True)
class Calendar:
    timezone: str
    start: dt.datetime  # naive local time: problem time 0
    shifts: tuple[Shift, ...]
    exceptions: tuple[tuple[dt.date, tuple[tuple[dt.time, dt.time], ...]], ...] = ()
    horizon_days: int = 28

    def windows(self, unit_s: int) -> tuple[tuple[int, int], ...]:
        zone = ZoneInfo(self.timezone)
        origin = self.start.replace(tzinfo=zone).astimezone(UTC)
        special = dict(self.exceptions)
        spans: list[tuple[int, int]] = []
        first = self.start.date() - dt.timedelta(days=1)  # a night shift from the day before
        for k in range(self.horizon_days + 2):
            day = first + dt.timedelta(days=k)
            if day in special:
                hours: Iterable[tuple[dt.time, dt.time]] = special[day]
            else:
                hours = [(s.start, s.end) for s in self.shifts if day.weekday() in s.days]
            for a, b in hours:
                lo = dt.datetime.combine(day, a, zone)
                hi_day = day + dt.timedelta(days=1) if b <= a else day
                hi = dt.datetime.combine(hi_day, b, zone)
                s = (lo.astimezone(UTC) - origin).total_seconds()
                e = (hi.astimezone(UTC) - origin).total_seconds()
                # Times are whole units: a window shrinks to the units it fully holds.
                s_u, e_u = -int(-s // unit_s), int(e // unit_s)
                e_u = min(e_u, self.horizon_days * 86400 // unit_s)
                if e_u > max(s_u, 0):
                    spans.append((max(s_u, 0), e_u))
        return merge(spans)


def merge(spans: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return tuple(out)


class OutsideCalendar(ValueError):
    """Manual work that no window holds: the plan runs past the calendar's horizon."""


# Where manual work goes when no window before the horizon holds it: so far out
# that the search steers clear of it, and `plan` refuses a plan that uses it.
BEYOND = 1 << 60


def fit(windows: Sequence[tuple[int, int]], ends: Sequence[int], t: int, d: int) -> int:
    """The earliest start ≥ t of manual work lasting d inside one window.

    `ends` is the list of the windows' ends (for bisection).
    """
    if d == 0:
        return t
    i = bisect.bisect_right(ends, t)
    while i < len(windows):
        s, e = windows[i]
        begin = s if s > t else t
        if e - begin >= d:
            return begin
        i += 1
    return BEYOND
