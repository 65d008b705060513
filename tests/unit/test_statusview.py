"""`cellctl status`'s view of the cell: built from the retained snapshot, rounded, with units."""

from __future__ import annotations

import json
from typing import Any

from cellctl.telemetry.statusview import StatusView, fmt_value

BASE = "cellctl/v2/demo"


def snapshot(step: dict[str, Any] | None, fraction: float | None) -> bytes:
    body = {
        "v": 1,
        "ts": 1.0,
        "device": "p1",
        "state": "held" if step else "idle",
        "code": 11,
        "reason": "",
        "connected": True,
        "step": step,
        "progress": None if fraction is None else {"fraction": fraction},
        "requests": [{"kind": "acknowledge", "text": "step j1/0 held: jam", "step": "j1/0"}],
        "alarms": [],
        "setup": {"material": "PLA"},
        "metrics": {
            "cycle_progress": {"unit": "", "value": 0.31259942054748535, "quality": "good"},
            "hotend_temp": {"unit": "degC", "value": 215.04, "quality": "good"},
            "speed": {"unit": "mm/s", "value": 12.0, "quality": "bad"},
            "count": {"unit": "", "value": None, "quality": "bad"},
        },
    }
    return json.dumps(body).encode()


def test_values_are_rounded_with_units() -> None:
    assert fmt_value(0.31259942054748535) == "0.3126"
    assert fmt_value(215.04, "degC") == "215°C"
    assert fmt_value(12345.678, "mm") == "12346 mm"
    assert fmt_value(12.0, "mm/s", "bad") == "12 mm/s (bad)"
    assert fmt_value(True) == "true" and fmt_value(None, "degC") == "—"


def test_held_step_request_and_no_stale_progress() -> None:
    v = StatusView(BASE)
    v.absorb(f"{BASE}/devices/p1/snapshot", snapshot({"key": "j1/0", "state": "held"}, 0.5))
    v.absorb(f"{BASE}/cell", json.dumps({"held": [{"step": "j1/0", "device": "p1"}]}).encode())
    (row,) = v.rows()
    assert row[:3] == ("p1", "held", "j1/0 (held)")
    assert row[3].endswith("50%") and "jam" in row[4] and row[5] == "material=PLA"
    assert "cycle_progress=0.3126" in row[6] and "hotend_temp=215°C" in row[6]
    assert v.held == [{"step": "j1/0", "device": "p1"}]
    # Progress of some other step is not shown; once the step is gone, no bar.
    v.absorb(f"{BASE}/devices/p1/progress", json.dumps({"step": "j2/0", "fraction": 0.9}).encode())
    assert v.rows()[0][3].endswith("50%")
    v.absorb(f"{BASE}/devices/p1/snapshot", snapshot(None, None))
    v.absorb(f"{BASE}/devices/p1/progress", json.dumps({"step": "j1/0", "fraction": 0.9}).encode())
    assert v.rows()[0][2:4] == ("", "")
    v.absorb(
        f"{BASE}/devices/p1/samples",
        json.dumps(
            {"samples": [{"name": "hotend_temp", "value": 20.123456, "quality": "good"}]}
        ).encode(),
    )
    assert "hotend_temp=20.12°C" in v.rows()[0][6]
