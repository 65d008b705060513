"""The live plan for subscribers: what the retained `plan` and `plan/problem` topics carry.

The job service offers the planner's current plan after every dispatch round
(`offer`); a plan not yet published becomes the feed's payloads at most once
every `min_interval_s` (a busy cell re-plans on every step change: subscribers
want the plan, not each of its drafts). A plan held back is offered again on
the next round, so the newest always goes out. The MQTT service waits on
`changed` and publishes both payloads retained (cellctl/telemetry/service.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the planning package loads only when a cell plans (footprint)
    from cellctl.planning.model import Plan, Problem

PLAN_MIN_INTERVAL_S = 2.0


class _Planned(Protocol):
    @property
    def plan(self) -> Plan: ...
    @property
    def made_at(self) -> float: ...
    @property
    def problem(self) -> Problem | None: ...


class PlanFeed:
    def __init__(
        self,
        min_interval_s: float = PLAN_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self._clock = clock
        self.plan: dict[str, Any] | None = None  # payload.plan
        self.problem: dict[str, Any] | None = None  # payload.plan_problem
        self.version = 0  # counts the plans made payloads
        self.changed = asyncio.Event()
        self._last: object = None
        self._at = -float("inf")

    def offer(
        self, live: _Planned | None, learned: Callable[[], dict[str, Any] | None] = lambda: None
    ) -> bool:
        """The planner's current plan; True when it became the feed's (published)."""
        if live is None or live is self._last or live.problem is None:
            return False
        now = self._clock()
        if now - self._at < self.min_interval_s:
            return False
        from cellctl.planning.published import plan_payload, problem_payload

        ts = time.time()
        self.plan = plan_payload(live.problem, live.plan, live.made_at, 1.0, ts)
        view = learned()
        if view is not None:
            self.plan["learned"] = view
        self.problem = problem_payload(live.problem, live.made_at, ts)
        self._last, self._at = live, now
        self.version += 1
        self.changed.set()
        return True
