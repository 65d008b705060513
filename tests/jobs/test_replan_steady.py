"""Announced changeovers hold still: a re-plan moves one only for a clearly better plan,
and one that slips back out of the notice window stays asked (both flapped in the demo
mix: hundreds of request/withdraw pairs in a few seconds)."""

from __future__ import annotations

from jobs.test_planned import cand

from cellctl.jobs.changeover import Announcer, Needed
from cellctl.jobs.planned import MOVE_MIN_S, _clearly_better


def test_a_move_must_be_clearly_better() -> None:
    kept = (1000, 300, 5000)
    assert not _clearly_better((999, 300, 4000), kept)  # a hair less tardiness: noise
    assert not _clearly_better((1000, 299, 1), kept)  # a hair less changeover: noise
    assert _clearly_better((1000 - MOVE_MIN_S - 101, 900, 9000), kept)  # tardiness first
    assert _clearly_better((1000, 300 - MOVE_MIN_S - 1, 5000), kept)
    assert not _clearly_better((1001, 0, 0), kept)  # more tardiness is never better
    assert _clearly_better((0, 0, 0), (0, 1000, 0))  # 10 % of a large figure
    assert not _clearly_better((0, 950, 0), (0, 1000, 0))


def test_asked_is_the_same_need_on_the_same_device() -> None:
    a = Announcer()
    step, other = cand(1, "PETG"), cand(2, "ABS")
    need = Needed("p1", step, {"material": "PLA"}, 700.0, 100.0, None)
    assert not a.asked("p1", need)
    a.update({"p1": need}, 0.0)
    later = Needed("p1", step, {"material": "PLA"}, 5000.0, 4400.0, None)  # slipped back
    assert a.asked("p1", later) and not a.asked("p2", later)
    assert not a.asked("p1", Needed("p1", other, {"material": "PLA"}, 700.0, 100.0, None))
