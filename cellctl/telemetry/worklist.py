"""The operator's worklist as rows: what to do, where, and when (from `payload.plan`).

Pure, shared by `cellctl status --watch` and `cellctl plan -c`. The plan lists
pending manual changeovers and bed clearings soonest first; a row says when
relative to now ("now", "in 12 min", "4 min late").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("when", "device", "do", "for", "takes")


def when(start: float, now: float) -> str:
    d = start - now
    if abs(d) < 30:
        return "now"
    m = abs(d) / 60
    text = f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"
    return f"in {text}" if d > 0 else f"{text} late"


def worklist_rows(work: Sequence[dict[str, Any]], now: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for w in work:
        do = f"changeover {w['change']}" if w["kind"] == "changeover" else "clear the bed"
        takes = f"{w['duration_s'] / 60:.1f} min"
        rows.append((when(float(w["start"]), now), str(w["device"]), do, str(w["job"]), takes))
    return rows
