"""Per-key changeover rules: times add across keys unless a pair override names the change."""

from __future__ import annotations

import pytest

from cellctl.planning import Job, Machine, Objective, Problem, check, plan
from cellctl.planning.changeovers import KeyRule, PairRule, change, label, tables

RULES = {
    "material": KeyRule(10, manual=True, overrides={("PLA", "PETG"): 8, ("PETG", "PLA"): 12}),
    "nozzle": KeyRule(6, manual=True),
    "tool": KeyRule(1),  # a tool changer: automatic
}
PLA4 = {"material": "PLA", "nozzle": "0.4"}
PETG4 = {"material": "PETG", "nozzle": "0.4"}
PETG6 = {"material": "PETG", "nozzle": "0.6"}


def test_keys_add_and_direction_matters() -> None:
    assert change(RULES, PLA4, PETG4) == PairRule(8, True)
    assert change(RULES, PETG4, PLA4) == PairRule(12, True)
    assert change(RULES, PLA4, PETG6) == PairRule(8 + 6, True)
    assert change(RULES, PLA4, PLA4) == PairRule(0, False)


def test_manual_if_any_changing_key_is_manual() -> None:
    assert change(RULES, {"tool": "T1"}, {"tool": "T2"}) == PairRule(1, False)
    assert change(RULES, {"tool": "T1", "nozzle": "0.4"}, {"tool": "T2", "nozzle": "0.6"}) == (
        PairRule(7, True)
    )


def test_a_pair_override_replaces_the_sum() -> None:
    pairs = {(label(PLA4), label(PETG6)): PairRule(9, True)}
    assert change(RULES, PLA4, PETG6, pairs) == PairRule(9, True)
    assert change(RULES, PETG6, PLA4, pairs) == PairRule(12 + 6, True)


def test_an_unknown_key_is_an_error() -> None:
    with pytest.raises(KeyError, match="fixture"):
        change(RULES, {"fixture": "F1"}, {"fixture": "F2"})


def test_tables_feed_the_planner() -> None:
    times, manual = tables("P1", RULES, [PLA4, PETG4, PETG6])
    assert times[label(PLA4)][label(PETG6)] == 14
    assert ("P1", label(PETG4), label(PETG6)) in manual
    jobs = tuple(
        Job(f"J{k}", label(s), {"P1": 30}) for k, s in enumerate([PETG6, PLA4, PETG4, PLA4])
    )
    problem = Problem(
        Objective.WEIGHTED_TARDINESS,
        (Machine("P1", label(PLA4)),),
        {"P1": times},
        jobs,
        manual=frozenset(manual),
    )
    got = plan(problem, "anytime", iterations=20)
    assert check(problem, got.assignments) == got.figures
    # Both PLA jobs first (no change), then PETG 0.4 (8), then the nozzle (6).
    assert got.figures.changeover == 14
