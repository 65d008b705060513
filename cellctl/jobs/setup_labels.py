"""A device setup as one string (`material=pla,nozzle=0.4`): what the planner, the
learned durations and the shift report key setups and changeovers by.

One spelling per value, as `dispatch.unmet` compares them: case folded, and a number
written as Python's float (`0.40` and `0.4` are the same nozzle).
"""

from __future__ import annotations

from collections.abc import Mapping


def norm(value: str) -> str:
    v = value.strip()
    try:
        return repr(float(v))
    except ValueError:
        return v.casefold()


def label(setup: Mapping[str, str]) -> str:
    return ",".join(f"{k}={norm(setup[k])}" for k in sorted(setup))


def parse_label(lab: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in lab.split(",")) if lab else {}
