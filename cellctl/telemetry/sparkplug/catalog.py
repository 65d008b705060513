"""What metrics a Sparkplug device has: the adapter from cellctl's descriptions.

Today the descriptions come from the drivers' declared metrics (`Driver.metrics()`:
name, type, unit, description) and the device's status (its setup). The retained
per-device snapshot (issue 26, cellctl/telemetry/snapshot.py) carries the same
descriptions; pointing `device_metrics` at it is the only change needed here.

Besides the driver's own metrics every device has the cell's view of it (the
names are cellctl's, fixed, and documented in docs/sparkplug.md):
PackML state, the step it runs and its progress, its loaded setup, its last
alarm, and the writable `Device Control/*` commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cellctl.model import MetricSpec
from cellctl.telemetry.sparkplug.payload import FROM_METRIC_TYPE, DataType


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    datatype: DataType
    unit: str = ""
    description: str = ""
    writable: bool = False


STATE = "PackML/State"
STATE_NAME = "PackML/StateName"
STEP = "Job/Step"
PROGRESS = "Job/Progress"
ALARM_CODE = "Alarm/Code"
ALARM_TEXT = "Alarm/Text"
ALARM_ACTIVE = "Alarm/Active"
SETUP_PREFIX = "Setup/"
CONTROL_PREFIX = "Device Control/"

# Device Control metric → the JSON command it runs (DCMD with the value true).
CONTROLS = {
    f"{CONTROL_PREFIX}Pause": "pause",
    f"{CONTROL_PREFIX}Resume": "resume",
    f"{CONTROL_PREFIX}Stop": "stop",
    f"{CONTROL_PREFIX}Reset": "reset",
}

# Node metrics (3.0, 6.4.18 for bdSeq; 5.18 "Commands" for Node Control/Rebirth).
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
OPEN_JOBS = "Cell/OpenJobs"
QUEUED_JOBS = "Cell/QueuedJobs"
SPOOL_DEPTH = "Cell/SpoolDepth"
DEVICES_ONLINE = "Cell/DevicesOnline"

NODE_METRICS = (
    MetricDef(BDSEQ, DataType.INT64),
    MetricDef(REBIRTH, DataType.BOOLEAN, writable=True),
    MetricDef(OPEN_JOBS, DataType.INT64, description="jobs queued, active or held"),
    MetricDef(QUEUED_JOBS, DataType.INT64, description="jobs waiting, none of their steps begun"),
    MetricDef(SPOOL_DEPTH, DataType.INT64, description="JSON events not yet acknowledged"),
    MetricDef(DEVICES_ONLINE, DataType.INT64, description="devices connected now"),
)

CELL_METRICS = (
    MetricDef(STATE, DataType.INT32, description="PackML state number (ISA-TR88.00.02)"),
    MetricDef(STATE_NAME, DataType.STRING, description="PackML state name"),
    MetricDef(STEP, DataType.STRING, description="job/step running here, or empty"),
    MetricDef(PROGRESS, DataType.DOUBLE, unit="1", description="fraction of the step done"),
    MetricDef(ALARM_CODE, DataType.STRING, description="code of the last alarm"),
    MetricDef(ALARM_TEXT, DataType.STRING, description="text of the last alarm"),
    MetricDef(ALARM_ACTIVE, DataType.BOOLEAN, description="the last alarm is active"),
    *(
        MetricDef(name, DataType.BOOLEAN, writable=True, description=f"write true: {cmd}")
        for name, cmd in CONTROLS.items()
    ),
)


def from_spec(spec: MetricSpec) -> MetricDef:
    return MetricDef(
        spec.name, FROM_METRIC_TYPE[spec.type], spec.unit, spec.description, spec.writable
    )


def device_metrics(declared: Iterable[MetricSpec], setup: Mapping[str, str]) -> list[MetricDef]:
    """Every metric of a device's DBIRTH: the cell's own, its setup keys, then the driver's."""
    out = list(CELL_METRICS)
    out += [MetricDef(SETUP_PREFIX + key, DataType.STRING) for key in sorted(setup)]
    taken = {m.name for m in out}
    out += [from_spec(s) for s in declared if s.name not in taken]
    return out
