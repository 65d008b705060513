"""What `cellctl status` shows, rebuilt from the cell's MQTT topics like any subscriber would.

The retained snapshots (`devices/<id>/snapshot`, `cell`) give the whole picture
at once; live `state`, `samples` and `progress` messages then update it. A
device's progress is shown only while its snapshot has a step on it (so a bar
never outlives its step), values are rounded and carry their unit, and a value
whose quality is not good is marked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

UNIT_LABELS = {"degC": "°C", "deg": "°"}
TIGHT_UNITS = {"%", "°C", "°"}


def fmt_value(value: Any, unit: str = "", quality: str = "good") -> str:
    """`0.31259942` → `0.3126`, `215.04 degC` → `215°C`-ish: four significant digits."""
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    else:
        text = str(value)
    label = UNIT_LABELS.get(unit, unit)
    if label and value is not None:
        text += label if label in TIGHT_UNITS else f" {label}"
    if quality != "good":
        text += f" ({quality})"
    return text


@dataclass
class DeviceView:
    state: str = "?"
    step: str = ""
    step_state: str = ""
    progress: float | None = None
    requests: list[str] = field(default_factory=list)
    setup: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    values: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name → (value, quality)

    def metrics_text(self) -> str:
        return ", ".join(
            f"{k}={fmt_value(v, self.units.get(k, ''), q)}"
            for k, (v, q) in sorted(self.values.items())
        )

    def bar(self) -> str:
        if not self.step or self.progress is None:
            return ""
        n = max(0, min(20, int(self.progress * 20)))
        return "█" * n + "░" * (20 - n) + f" {self.progress * 100:.0f}%"


@dataclass
class StatusView:
    base: str
    cell: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, DeviceView] = field(default_factory=dict)
    held: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)  # payload.plan: its worklist

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "device",
        "state",
        "step",
        "progress",
        "operator request",
        "setup",
        "metrics",
    )

    def absorb(self, topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict) or not topic.startswith(self.base + "/"):
            return
        parts = topic[len(self.base) + 1 :].split("/")
        if parts == ["status"]:
            self.cell.update(body)
        elif parts == ["cell"]:
            self.held = list(body.get("held", []))
        elif parts == ["plan"]:
            self.plan = body
        elif parts[0] == "devices" and len(parts) == 3:
            self._device(self.devices.setdefault(parts[1], DeviceView()), parts[2], body)

    def _device(self, dev: DeviceView, kind: str, body: dict[str, Any]) -> None:
        if kind == "snapshot":
            dev.state = str(body.get("state", "?"))
            step = body.get("step") or {}
            dev.step, dev.step_state = str(step.get("key", "")), str(step.get("state", ""))
            dev.progress = (body.get("progress") or {}).get("fraction")
            dev.requests = [f"{r.get('kind')}: {r.get('text')}" for r in body.get("requests", [])]
            dev.setup = dict(body.get("setup", {}))
            metrics = body.get("metrics", {})
            dev.units = {k: str(m.get("unit", "")) for k, m in metrics.items()}
            dev.values = {
                k: (m.get("value"), str(m.get("quality", "good"))) for k, m in metrics.items()
            }
        elif kind == "state":
            dev.state = str(body.get("state", "?"))
        elif kind == "samples":
            for s in body.get("samples", []):
                dev.values[s["name"]] = (s.get("value"), str(s.get("quality", "good")))
        elif kind == "progress" and body.get("step") == dev.step:
            dev.progress = body.get("fraction")  # only for the step the snapshot shows

    def rows(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for dev_id, d in sorted(self.devices.items()):
            step = f"{d.step} ({d.step_state})" if d.step else ""
            setup = ", ".join(f"{k}={v}" for k, v in sorted(d.setup.items()))
            out.append(
                (dev_id, d.state, step, d.bar(), "; ".join(d.requests), setup, d.metrics_text())
            )
        return out
