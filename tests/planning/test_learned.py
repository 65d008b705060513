"""Learned durations: robust to outliers, converging on what the machine really takes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.planning.learned import Learned, trimmed_mean


def test_the_configured_guess_holds_until_enough_changeovers_ran() -> None:
    learned = Learned(min_samples=3)
    learned.changeover_done("p1", "PLA", "PETG", 700)
    learned.changeover_done("p1", "PLA", "PETG", 720)
    est = learned.changeover("p1", "PLA", "PETG", configured=300)
    assert (est.value, est.samples, est.learned) == (300, 2, False)
    learned.changeover_done("p1", "PLA", "PETG", 710)
    est = learned.changeover("p1", "PLA", "PETG", configured=300)
    assert est.learned and est.value == pytest.approx(710)
    # each direction, each device its own
    assert not learned.changeover("p1", "PETG", "PLA", configured=300).learned
    assert not learned.changeover("p2", "PLA", "PETG", configured=300).learned


@given(seed=st.integers(0, 100_000), true_s=st.floats(60, 3_600), guess_s=st.floats(10, 7_200))
def test_within_10_percent_after_10_changeovers_despite_an_outlier(
    seed: int, true_s: float, guess_s: float
) -> None:
    """The issue's test, on the estimator: operators take the true time ±8 %, and one
    of the ten was confirmed an hour late (forgotten); the estimate is within 10 %.

    The spread stays inside the tolerance so the property holds for every seed: with
    ±15 % an unlucky draw (seed 2107) sat 10.3 % off, which says nothing about the
    outlier. What is tested is that the forgotten hour does not move the estimate."""
    rng = random.Random(seed)
    learned = Learned()
    late = rng.randrange(10)
    for i in range(10):
        took = true_s * rng.uniform(0.92, 1.08) + (3_600 if i == late else 0)
        learned.changeover_done("p1", "PLA-red", "PLA-blue", took)
    est = learned.changeover("p1", "PLA-red", "PLA-blue", configured=guess_s)
    assert est.learned and est.samples == 10
    assert abs(est.value - true_s) <= 0.10 * true_s


def test_a_slow_printer_gets_its_factor() -> None:
    learned = Learned()
    rng = random.Random(1)
    for _ in range(12):
        est = rng.uniform(600, 6_000)
        learned.step_done("slow", est, est * 1.08 * rng.uniform(0.98, 1.02))
    learned.step_done("slow", 1_000, 50_000)  # a step held for hours by a jam
    speed = learned.speed("slow")
    assert speed.learned and speed.value == pytest.approx(1.08, rel=0.02)
    assert learned.step("slow", 3_600) == pytest.approx(3_600 * 1.08, rel=0.02)
    assert learned.speed("other").value == 1.0


def test_nonsense_measurements_are_ignored() -> None:
    learned = Learned(min_samples=1)
    learned.changeover_done("p1", "a", "b", float("nan"))
    learned.changeover_done("p1", "a", "b", -5)
    learned.step_done("p1", 0, 100)
    learned.step_done("p1", None, 100)
    learned.step_done("p1", 100, float("inf"))
    assert not learned.changeover("p1", "a", "b", 60).learned
    assert not learned.speed("p1").learned


def test_only_the_recent_window_counts() -> None:
    learned = Learned(window=5, trim=0)
    for s in (100, 100, 100, 100, 100, 400, 400, 400, 400, 400):
        learned.changeover_done("m", "t1", "t2", s)
    assert learned.changeover("m", "t1", "t2", 1).value == 400  # a new fixture: new times


def test_trimmed_mean() -> None:
    assert trimmed_mean([1, 2, 3, 4, 100], 0.2) == 3
    assert trimmed_mean([5], 0.4) == 5
    assert trimmed_mean([1, 9], 0.4) == 5
    with pytest.raises(ValueError):
        trimmed_mean([], 0.2)
    with pytest.raises(ValueError):
        Learned(trim=0.5)
