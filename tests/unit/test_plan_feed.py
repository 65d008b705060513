"""The plan feed's rate limit: at most one plan per interval, the newest never lost."""

from __future__ import annotations

from dataclasses import dataclass

from cellctl.jobs.plan_feed import PlanFeed
from cellctl.planning import Job, Machine, Objective, Problem, plan


@dataclass(frozen=True)
class Live:
    plan: object
    made_at: float
    problem: Problem | None


def live(n: int) -> Live:
    problem = Problem(
        Objective.WEIGHTED_TARDINESS,
        (Machine("m1", "a"),),
        {"m1": {"a": {"b": 60}, "b": {"a": 60}}},
        tuple(Job(f"j{i}", "ab"[i % 2], {"m1": 100}) for i in range(n)),
        time_unit="s",
    )
    return Live(plan(problem, "instant"), 1_800_000_000.0, problem)


def test_one_plan_per_interval_and_the_held_one_goes_out_next() -> None:
    now = [0.0]
    feed = PlanFeed(min_interval_s=2.0, clock=lambda: now[0])
    first, second, third = live(1), live(2), live(3)
    assert feed.offer(first) and feed.version == 1 and feed.changed.is_set()
    assert not feed.offer(first)  # the same plan: nothing new
    now[0] = 1.0
    assert not feed.offer(second)  # too soon: held back
    assert feed.plan is not None and len(feed.plan["devices"]["m1"]) == 1
    now[0] = 2.5
    assert not feed.offer(None)
    assert feed.offer(third)  # the newest at the next round
    assert feed.plan is not None and len(feed.plan["devices"]["m1"]) == 3
    assert feed.problem is not None and feed.problem["origin"] == feed.plan["origin"]
    assert not feed.offer(Live(third.plan, 0.0, None))  # no problem: nothing to publish
