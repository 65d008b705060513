"""The planning problem and its plan, as frozen values.

Times are integers in the problem's `time_unit` (choose seconds for finer
times): integer arithmetic makes every figure exact, so the checker's sums
equal the planner's bit for bit and a brute-force optimum is an optimum.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

# In a job's `reserves`: the machine that ran its one `after` job, held from when
# that job leaves it until this one ends (a robot unloading a printer: the
# printer takes no other work while the part waits on its bed). A job has at
# most one such holder.
PREVIOUS: Final = "@previous"


class Objective(enum.StrEnum):
    # Lexicographic: total weighted tardiness, then changeover time, then makespan.
    WEIGHTED_TARDINESS = "weighted_tardiness"
    # Makespan alone, as in the literature on unrelated parallel machines.
    MAKESPAN = "makespan"


@dataclass(frozen=True)
class Machine:
    id: str
    initial_setup: str
    free_at: int = 0  # when the running step ends (its remaining estimate)


@dataclass(frozen=True)
class Job:
    """One step to place: it runs on exactly one of the machines in `durations`."""

    id: str
    setup: str
    durations: Mapping[str, int]  # machine id -> processing time; names exactly the capable
    release: int = 0  # earliest start
    due: int | None = None
    weight: int = 1
    after: tuple[str, ...] = ()  # jobs that must end before this one starts
    # Operator work on the machine after the job ends (clearing the bed when the
    # route has no unload step): manual, so inside a shift when there is a calendar.
    clear: int = 0
    # Devices (machine ids, or PREVIOUS) held while the job runs, besides the one
    # that runs it: a robot tending a machine, a printer waiting to be unloaded.
    reserves: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    objective: Objective
    machines: tuple[Machine, ...]
    # setup_times[m][a][b]: changeover on m from setup a to b (a == b costs 0).
    setup_times: Mapping[str, Mapping[str, Mapping[str, int]]]
    jobs: tuple[Job, ...]
    time_unit: str = "min"
    # (machine, from, to) changeovers that need an operator; the rest are automatic.
    manual: frozenset[tuple[str, str, str]] = frozenset()
    # Operator windows [start, end) in problem time, sorted and disjoint; None: always.
    shifts: tuple[tuple[int, int], ...] | None = None
    # Machine -> the jobs that open its sequence, in order, whatever else changes:
    # started, or announced to an operator (a re-plan keeps them; see `plan`).
    pinned: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def changeover(self, machine: str, a: str, b: str) -> int:
        return 0 if a == b else self.setup_times[machine][a][b]

    def is_manual(self, machine: str, a: str, b: str) -> bool:
        return a != b and (machine, a, b) in self.manual


@dataclass(frozen=True)
class Figures:
    """What a plan costs. `key` is what the objective compares, smaller is better."""

    objective: Objective
    weighted_tardiness: int
    changeover: int  # total changeover time
    makespan: int  # the latest end of any job (0 for no jobs)

    @property
    def key(self) -> tuple[int, ...]:
        if self.objective is Objective.MAKESPAN:
            return (self.makespan,)
        return (self.weighted_tardiness, self.changeover, self.makespan)


@dataclass(frozen=True)
class Assignment:
    job: str
    machine: str
    start: int
    end: int
    changeover: int  # the changeover before the job
    setup_before: str  # the machine's setup when the changeover begins
    # When the changeover begins: just before the start if automatic; a manual one
    # begins as early as an operator window holds it.
    changeover_start: int
    clear_start: int | None = None  # the bed clearing after the job, if it has one
    # (device, from, to): the devices the job holds besides its machine (`Job.reserves`).
    reserved: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Plan:
    """Per machine, its jobs in order, with times; `figures` as the planner computed them."""

    sequences: Mapping[str, tuple[str, ...]]
    assignments: tuple[Assignment, ...]
    figures: Figures
    method: str
    iterations: int = 0
    elapsed_s: float = 0.0
