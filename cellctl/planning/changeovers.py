"""Changeover times from setup keys: how the cell's per-key rules become `setup_times`.

A setup is a set of keys (`material`, `nozzle`, `tool`, `fixture` …) with
values; the planner sees it as one label (`material=PETG,nozzle=0.4`). Per
device and key, a rule gives the time to change that key (a default, and
from→to overrides: PLA→PETG is not PETG→PLA) and whether an operator does it.

The rule for a change of several keys: **the per-key times add** (an
operator purges, then swaps the nozzle), unless a pair override names the
whole from→to setups, which then replaces the sum. The change is manual if
any key that changes is manual (or the pair override says so). A key one
side lacks changes from or to "nothing" (its default applies). This module
builds the tables; wiring it to the cell's config comes with the live
planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Setup = Mapping[str, str]


@dataclass(frozen=True)
class KeyRule:
    default: int  # time to change this key's value
    manual: bool = False
    overrides: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (from, to) -> time


@dataclass(frozen=True)
class PairRule:
    time: int
    manual: bool


def label(setup: Setup) -> str:
    """The setup's label: keys sorted, `key=value` joined by commas."""
    return ",".join(f"{k}={setup[k]}" for k in sorted(setup))


def change(
    rules: Mapping[str, KeyRule],
    a: Setup,
    b: Setup,
    pairs: Mapping[tuple[str, str], PairRule] | None = None,
) -> PairRule:
    """The changeover from setup a to setup b on one device."""
    if pairs:
        whole = pairs.get((label(a), label(b)))
        if whole is not None:
            return whole
    total, manual = 0, False
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, ""), b.get(key, "")
        if va == vb:
            continue
        rule = rules.get(key)
        if rule is None:
            raise KeyError(f"no changeover rule for setup key {key!r}")
        total += rule.overrides.get((va, vb), rule.default)
        manual = manual or rule.manual
    return PairRule(total, manual)


def tables(
    device: str,
    rules: Mapping[str, KeyRule],
    setups: Iterable[Setup],
    pairs: Mapping[tuple[str, str], PairRule] | None = None,
) -> tuple[dict[str, dict[str, int]], set[tuple[str, str, str]]]:
    """(setup_times[device], manual triples) over every ordered pair of these setups."""
    distinct = {label(s): s for s in setups}
    times: dict[str, dict[str, int]] = {}
    manual: set[tuple[str, str, str]] = set()
    for la, a in distinct.items():
        row = times.setdefault(la, {})
        for lb, b in distinct.items():
            if la == lb:
                continue
            c = change(rules, a, b, pairs)
            row[lb] = c.time
            if c.manual and c.time:
                manual.add((device, la, lb))
    return times, manual
