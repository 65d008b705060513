"""Configured vs learned durations, as `cellctl check` and `cellctl plan -c` show them.

`cellctl check` reads them from the cell's store (read-only: the daemon may be
running); a store without measurements (or none yet) shows nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cellctl.config import Cell
from cellctl.store import DEFAULT_FILE


def from_store(cell: Cell) -> dict[str, Any] | None:
    """{"changeovers": […], "speed": {…}} from the store's measurements, or None."""
    path = cell.state_dir / DEFAULT_FILE
    if not path.exists():
        return None
    from cellctl.jobs.learning import compare, history_rows, learned_from

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = history_rows(conn)
        finally:
            conn.close()
    except sqlite3.Error:  # no table yet (an older store), or unreadable: nothing learned
        return None
    if not rows:
        return None
    return compare(learned_from(rows), cell.config.scheduler)


def lines(learned: dict[str, Any]) -> list[str]:
    out = ["learned durations (configured → learned, from the cell's measurements):"]
    for c in learned["changeovers"]:
        got = (
            f"{c['learned_s']:.1f} s"
            if c["learned_s"] is not None
            else "not yet (too few measurements)"
        )
        out.append(
            f"  {c['device']}: changeover {c['change']}: {c['configured_s']:.0f} s → {got}"
            f" ({c['samples']} measured)"
        )
    for device, sp in sorted(learned["speed"].items()):
        got = f"× {sp['factor']:.3f}" if sp["factor"] is not None else "not yet"
        out.append(f"  {device}: step time vs estimate: × 1 → {got} ({sp['steps']} steps)")
    return out
