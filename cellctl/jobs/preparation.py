"""Preparation ahead of a manual changeover, safely (`[scheduler.preparation.<key>]`).

Each dispatch round the planner passes the manual changeovers its plan needs
(`changeover.Needed`, announced or not yet). A device that is free and waits
for one, whose changeover starts within the key's `lead_s`, gets the key's
lines for the value it has loaded (a printer heats to the loaded material's
unload temperature), once per planned changeover, and only while an operator
is on shift: nothing heats or moves for a change nobody is there to do. A
device that works is sent only the lines of keys declared `while_working`
(in between its job's own lines; a preheat of the nozzle printing now would
change the print, so the default is no). When the changeover goes away
without being done (a re-plan moved it), the `undo` lines go out (heater off),
if the device is still free (or they were sent while it worked); a changeover
done needs no undo (the next job sets its own temperatures).

Nothing is stored: after a restart the next plan prepares again what is still
needed (sending the same lines twice is harmless for a temperature target).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cellctl.jobs.changeover import Needed
from cellctl.scheduler_config import SchedulerSection


@dataclass(frozen=True)
class PrepAction:
    device: str
    step_key: str  # the step whose changeover it prepares
    lines: tuple[str, ...]
    undo: bool = False  # these lines undo an earlier preparation
    while_working: bool = False  # the device may be running a step (sent between its lines)


class Preparer:
    def __init__(self) -> None:
        # device → (step, undo lines, sent while working)
        self._done: dict[str, tuple[str, tuple[str, ...], bool]] = {}
        self._out: list[PrepAction] = []
        self.prepared = 0
        self.undone = 0

    def update(
        self,
        needed: Mapping[str, Needed],
        free: Collection[str],
        met: Collection[tuple[str, str]],
        now: float,
        cfg: SchedulerSection,
    ) -> None:
        for dev, (key, back, working) in list(self._done.items()):
            n = needed.get(dev)
            if n is not None and n.step.key == key:
                continue
            del self._done[dev]
            if (dev, key) not in met and back and (dev in free or working):
                self.undone += 1
                self._out.append(PrepAction(dev, key, back, undo=True, while_working=working))
        if not cfg.preparation:
            return
        on_shift: bool | None = None
        for dev, n in sorted(needed.items()):
            if dev in self._done:
                continue
            working = dev not in free
            lines: list[str] = []
            undo: list[str] = []
            for key in n.load:
                prep = cfg.preparation.get(key)
                if prep is None or n.changeover_start - now > prep.lead_s:
                    continue
                if working and not prep.while_working:
                    continue
                lines.extend(prep.lines_for(n.loaded.get(key)))
                undo.extend(prep.undo)
            if not lines:
                continue
            if on_shift is None:
                on_shift = cfg.on_shift(now)
            if not on_shift:
                return
            self._done[dev] = (n.step.key, tuple(undo), working)
            self.prepared += 1
            self._out.append(PrepAction(dev, n.step.key, tuple(lines), while_working=working))

    def take(self) -> list[PrepAction]:
        out, self._out = self._out, []
        return out
