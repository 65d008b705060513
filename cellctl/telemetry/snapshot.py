"""What the cell looks like now, per device and for the whole cell: the retained snapshot.

`Snapshots` is pure state (no I/O, no clock of its own): it is fed the app's
events (`apply`), the metric descriptions a driver declares (`describe`), the
loaded setups and held steps the job service knows (`set_setup`,
`set_held`), and answers with frozen values:

* `DeviceSnapshot`: state, the step on the device and its progress, pending
  operator requests, active alarms, loaded setup, and every declared metric
  (its `MetricInfo` description: name, type, unit, description, writable)
  with its last *reported* reading (value, quality, source time).
* `CellSnapshot`: every pending operator request and every held step.

The metric readings are the values that went out on `samples` (after the
deadband), so a subscriber that takes the retained snapshot and applies later
samples on top holds exactly what the daemon holds. One contract for every
consumer: the JSON encoding publishes it retained on `devices/<id>/snapshot`
and `cell` (docs/mqtt.md), `cellctl status` reads that, and a Sparkplug B
encoding builds its births (DBIRTH metrics with their types) from the same
values.

`apply` returns what it changed (`Changed`), so its owner publishes only
those snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cellctl.model import (
    Alarm,
    DeviceState,
    Event,
    MetricSpec,
    MetricType,
    MetricValue,
    OperatorRequest,
    Progress,
    Quality,
    Sample,
    StateChanged,
    StepChanged,
    StepProgress,
    StepState,
)

# Step states in which a step occupies its device (shown as the device's step).
_ON_DEVICE = frozenset({StepState.STARTING, StepState.RUNNING, StepState.HELD})


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """A metric as its driver declares it (MetricSpec); `type` None: not declared."""

    name: str
    type: MetricType | None
    unit: str = ""
    description: str = ""
    writable: bool = False

    @classmethod
    def of(cls, spec: MetricSpec) -> MetricInfo:
        return cls(spec.name, spec.type, spec.unit, spec.description, spec.writable)


@dataclass(frozen=True, slots=True)
class Reading:
    """A metric's last reported value; `value` None: nothing reported yet."""

    value: MetricValue | None
    quality: Quality
    timestamp: float | None


NO_READING = Reading(None, Quality.BAD, None)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    device: str
    kind: str
    text: str
    step: str | None
    details: Mapping[str, Any]
    timestamp: float
    hold: bool = False  # the job service's hold of `step` (cleared when the step leaves held)


@dataclass(frozen=True, slots=True)
class StepOnDevice:
    key: str
    state: StepState
    attempt: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HeldStep:
    key: str
    device: str | None
    reason: str
    attempt: int
    timestamp: float


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    code: str
    text: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    device: str
    state: DeviceState
    reason: str
    timestamp: float  # of the newest event it reflects
    step: StepOnDevice | None = None
    progress: Progress | None = None
    requests: tuple[PendingRequest, ...] = ()
    alarms: tuple[ActiveAlarm, ...] = ()
    setup: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, MetricInfo] = field(default_factory=dict)
    readings: Mapping[str, Reading] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.state != DeviceState.UNAVAILABLE

    def reading(self, name: str) -> Reading:
        return self.readings.get(name, NO_READING)


@dataclass(frozen=True, slots=True)
class CellSnapshot:
    requests: tuple[PendingRequest, ...] = ()
    held: tuple[HeldStep, ...] = ()


@dataclass(slots=True)
class Changed:
    devices: set[str] = field(default_factory=set)
    cell: bool = False

    def __bool__(self) -> bool:
        return bool(self.devices) or self.cell


class Snapshots:
    def __init__(self, device_ids: Iterable[str] = ()) -> None:
        self._devices: dict[str, DeviceSnapshot] = {}  # their `readings` are in _readings
        # Kept apart and updated in place: samples are the hot path, snapshots are read
        # at most every few seconds.
        self._readings: dict[str, dict[str, Reading]] = {}
        self._held: dict[str, HeldStep] = {}
        for d in device_ids:
            self._get(d)

    # --- reading --------------------------------------------------------------

    def device(self, device_id: str) -> DeviceSnapshot:
        return replace(self._get(device_id), readings=dict(self._readings.get(device_id, {})))

    def devices(self) -> Mapping[str, DeviceSnapshot]:
        return {d: self.device(d) for d in self._devices}

    def cell(self) -> CellSnapshot:
        reqs = tuple(r for d in sorted(self._devices) for r in self._devices[d].requests)
        return CellSnapshot(reqs, tuple(self._held[k] for k in sorted(self._held)))

    # --- feeding --------------------------------------------------------------

    def describe(self, device_id: str, specs: Sequence[MetricSpec]) -> Changed:
        """The metrics the driver declares (called when a device connects)."""
        snap = self._get(device_id)
        metrics = {s.name: MetricInfo.of(s) for s in specs}
        for name in snap.metrics:  # reported before: keep it, described or not
            metrics.setdefault(name, snap.metrics[name])
        if metrics == snap.metrics:
            return Changed()
        self._put(replace(snap, metrics=metrics))
        return Changed({device_id})

    def set_setup(self, device_id: str, setup: Mapping[str, str]) -> Changed:
        snap = self._get(device_id)
        if dict(setup) == dict(snap.setup):
            return Changed()
        self._put(replace(snap, setup=dict(setup)))
        return Changed({device_id})

    def set_held(self, steps: Iterable[HeldStep], requests: Iterable[OperatorRequest]) -> Changed:
        """The job service's held steps, and a request for each (at start they are the holds
        from before this run; later they confirm what the events said)."""
        held = {h.key: h for h in steps}
        changed = Changed(cell=held != self._held)
        self._held = held
        for dev_id, snap in list(self._devices.items()):
            kept = tuple(r for r in snap.requests if not r.hold or r.step in held)
            step = snap.step
            for h in held.values():
                if h.device == dev_id and step is None:
                    step = StepOnDevice(h.key, StepState.HELD, h.attempt, h.reason)
            if kept != snap.requests or step != snap.step:
                self._put(replace(snap, requests=kept, step=step))
                changed.devices.add(dev_id)
                changed.cell = True
        for req in requests:
            if not req.device_id or req.step_key not in held:
                continue
            if any(r.step == req.step_key for r in self._get(req.device_id).requests):
                continue
            changed.devices |= self._request(req, hold=True).devices
            changed.cell = True
        return changed

    def reported(self, device_id: str, samples: Sequence[Sample]) -> Changed:
        """Samples that went out on `samples`: they become the metrics' readings."""
        snap = self._get(device_id)
        readings = self._readings.setdefault(device_id, {})
        metrics = snap.metrics
        changed = False
        for s in samples:
            reading = Reading(s.value, s.quality, s.timestamp)
            if readings.get(s.name) != reading:  # equal: a heartbeat repeating what is known
                readings[s.name] = reading
                changed = True
            if s.name not in metrics:
                metrics = {**metrics, s.name: MetricInfo(s.name, _type_of(s.value))}
        if metrics is not snap.metrics:
            self._put(replace(snap, metrics=metrics))
        return Changed({device_id}) if changed else Changed()

    def apply(self, ev: Event) -> Changed:
        """Any bus event; Samples are not taken here (see `reported`)."""
        if isinstance(ev, StateChanged):
            return self._state(ev)
        if isinstance(ev, StepChanged):
            return self._step(ev)
        if isinstance(ev, StepProgress):
            snap = self._get(ev.device_id)
            step = snap.step
            if step is None or step.key != ev.step_key:
                step = StepOnDevice(ev.step_key, StepState.RUNNING)
            self._put(replace(snap, step=step, progress=ev.progress, timestamp=ev.timestamp))
            return Changed({ev.device_id})
        if isinstance(ev, OperatorRequest):
            return self._request(ev, hold=ev.step_key in self._held)
        if isinstance(ev, Alarm):
            snap = self._get(ev.device_id)
            alarms = [a for a in snap.alarms if a.code != ev.code]
            if ev.active:
                alarms.append(ActiveAlarm(ev.code, ev.text, ev.timestamp))
            self._put(replace(snap, alarms=tuple(alarms), timestamp=ev.timestamp))
            return Changed({ev.device_id})
        return Changed()

    # --- the rules -------------------------------------------------------------

    def _state(self, ev: StateChanged) -> Changed:
        snap = self._get(ev.device_id)
        # A device's own requests (M0, a tool change) last until it moves on; a held
        # step's request lasts until the job service says the step left held.
        requests = tuple(r for r in snap.requests if r.hold)
        if ev.state == DeviceState.UNAVAILABLE:
            # Nothing is known while disconnected: the last values stay, marked bad.
            readings = self._readings.get(ev.device_id, {})
            for n, r in readings.items():
                readings[n] = replace(r, quality=Quality.BAD)
        self._put(
            replace(
                snap,
                state=ev.state,
                reason=ev.reason,
                requests=requests,
                timestamp=ev.timestamp,
            )
        )
        return Changed({ev.device_id}, cell=requests != snap.requests)

    def _step(self, ev: StepChanged) -> Changed:
        changed = Changed()
        key = ev.step_key
        if ev.state == StepState.HELD:
            self._held[key] = HeldStep(key, ev.device_id, ev.reason, ev.attempt, ev.timestamp)
            changed.cell = True
        elif self._held.pop(key, None) is not None:
            changed.cell = True
        if ev.device_id is not None:
            self._get(ev.device_id)
        for dev_id, snap in list(self._devices.items()):
            step, progress, requests = snap.step, snap.progress, snap.requests
            if ev.state != StepState.HELD:
                requests = tuple(r for r in requests if r.step != key)
            if dev_id == ev.device_id and ev.state in _ON_DEVICE:
                if step is None or step.key != key:
                    progress = None
                step = StepOnDevice(key, ev.state, ev.attempt, ev.reason)
            elif step is not None and step.key == key:
                step, progress = None, None  # ended, queued again, or moved elsewhere
            if (step, progress, requests) != (snap.step, snap.progress, snap.requests):
                changed.cell |= requests != snap.requests
                self._put(replace(snap, step=step, progress=progress, requests=requests))
                changed.devices.add(dev_id)
        return changed

    def _request(self, ev: OperatorRequest, hold: bool) -> Changed:
        snap = self._get(ev.device_id)
        req = PendingRequest(
            ev.device_id, ev.kind.value, ev.text, ev.step_key, dict(ev.details), ev.timestamp, hold
        )
        # One pending request per (kind, step): a repeated one replaces the older.
        kept = tuple(r for r in snap.requests if (r.kind, r.step) != (req.kind, req.step))
        self._put(replace(snap, requests=(*kept, req), timestamp=ev.timestamp))
        return Changed({ev.device_id}, cell=True)

    def _get(self, device_id: str) -> DeviceSnapshot:
        snap = self._devices.get(device_id)
        if snap is None:
            snap = self._devices[device_id] = DeviceSnapshot(
                device_id, DeviceState.UNAVAILABLE, "", 0.0
            )
        return snap

    def _put(self, snap: DeviceSnapshot) -> None:
        self._devices[snap.device] = snap


def _type_of(value: MetricValue) -> MetricType:
    if isinstance(value, bool):
        return MetricType.BOOL
    if isinstance(value, int):
        return MetricType.INT
    if isinstance(value, float):
        return MetricType.FLOAT
    return MetricType.STRING


# --- the JSON form (payload.snapshot / payload.cell; docs/mqtt.md) ---------------


def device_dict(snap: DeviceSnapshot) -> dict[str, Any]:
    p = snap.progress
    return {
        "device": snap.device,
        "state": snap.state.label,
        "code": int(snap.state),
        "reason": snap.reason,
        "connected": snap.connected,
        "step": None
        if snap.step is None
        else {
            "key": snap.step.key,
            "state": snap.step.state.value,
            "attempt": snap.step.attempt,
            "reason": snap.step.reason,
        },
        "progress": None
        if p is None
        else {
            "fraction": p.fraction,
            "lines_done": p.lines_done,
            "last_acked_line": p.last_acked_line,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "remaining_s": p.remaining_s,
        },
        "requests": [request_dict(r) for r in snap.requests],
        "alarms": [{"code": a.code, "text": a.text, "ts": a.timestamp} for a in snap.alarms],
        "setup": dict(snap.setup),
        "metrics": {
            name: {
                "type": None if info.type is None else info.type.value,
                "unit": info.unit,
                "description": info.description,
                "writable": info.writable,
                "value": snap.reading(name).value,
                "quality": snap.reading(name).quality.value,
                "ts": snap.reading(name).timestamp,
            }
            for name, info in sorted(snap.metrics.items())
        },
    }


def request_dict(r: PendingRequest) -> dict[str, Any]:
    return {
        "device": r.device,
        "kind": r.kind,
        "text": r.text,
        "step": r.step,
        "details": dict(r.details),
        "ts": r.timestamp,
    }


def cell_dict(snap: CellSnapshot) -> dict[str, Any]:
    return {
        "requests": [request_dict(r) for r in snap.requests],
        "held": [
            {
                "step": h.key,
                "device": h.device,
                "reason": h.reason,
                "attempt": h.attempt,
                "ts": h.timestamp,
            }
            for h in snap.held
        ],
    }
