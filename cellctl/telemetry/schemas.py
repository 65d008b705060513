"""JSON Schemas of every payload and command, generated from the models below.

`python -m cellctl.telemetry.schemas` rewrites cellctl/schemas/*.json; a test
checks that the files in the repo match, and that what the cell publishes
validates against them. The models here describe the wire format written by
`JsonEncoding` (which builds plain dicts for speed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cellctl.command_payloads import COMMANDS
from cellctl.model import DeviceState, Quality, RequestKind
from cellctl.planning.published import PlanPayload, ProblemPayload
from cellctl.report_payload import ReportPayload

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
StateLabel = Literal[  # kept in step with DeviceState by test_schema_files_match_the_models
    "unavailable",
    "clearing",
    "stopped",
    "starting",
    "idle",
    "suspended",
    "execute",
    "stopping",
    "aborting",
    "aborted",
    "holding",
    "held",
    "unholding",
    "suspending",
    "unsuspending",
    "resetting",
    "completing",
    "complete",
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1]
    ts: float


class _Event(_Payload):
    src: str
    seq: int


class Status(_Payload):
    """Retained cell liveness; the same payload (state offline) is the will."""

    state: Literal["online", "offline"]
    reason: str
    boot: str


class SpoolPayload(_Payload):
    depth: int
    dropped_samples: int
    dropped_offline: int
    # Messages the spool could not keep because the disk was full (docs/mqtt.md).
    dropped_disk_full: int = 0


class State(_Event):
    device: str
    state: StateLabel
    code: int
    previous: StateLabel
    reason: str


class SampleItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    value: bool | int | float | str
    ts: float
    quality: Quality


class SamplesPayload(_Payload):
    device: str
    samples: list[SampleItem]


class ProgressPayload(_Payload):
    device: str
    step: str
    fraction: float | None
    lines_done: int | None
    last_acked_line: int | None
    bytes_done: int | None
    bytes_total: int | None
    remaining_s: float | None


class AlarmPayload(_Event):
    device: str
    code: str
    text: str
    active: bool


class RequestPayload(_Event):
    device: str
    kind: RequestKind
    text: str
    step: str | None
    details: dict[str, Any]


class JobEventPayload(_Event):
    job: str
    event: str
    state: str
    step: int | None
    device: str | None
    detail: str


class Origin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The user the broker vouched for (the command topic's <user>); null on a legacy topic.
    user: str | None
    # False when the broker may accept anonymous clients (allow_anonymous): a claim only.
    verified: bool
    client_id: str | None
    user_properties: dict[str, str]
    response_topic: str | None
    # A front end's own user when it sent the command for `user` (`on_behalf_of`).
    via: str | None = None


class AuditPayload(_Event):
    command: str
    id: str | None
    origin: Origin
    outcome: Literal["accepted", "rejected"]
    reason: str


class JobsPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int
    more: bool
    after: int | None


class Reply(_Payload):
    command: str
    id: str | None
    outcome: Literal["accepted", "rejected"]
    reason: str
    result: Any
    # `jobs` replies only: whether more jobs follow, and the `after` that asks for them.
    page: JobsPage | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotStep(_Strict):
    key: str
    state: Literal["starting", "running", "held"]
    attempt: int
    reason: str


class SnapshotProgress(_Strict):
    fraction: float | None
    lines_done: int | None
    last_acked_line: int | None
    bytes_done: int | None
    bytes_total: int | None
    remaining_s: float | None


class PendingRequestItem(_Strict):
    device: str
    kind: RequestKind
    text: str
    step: str | None
    details: dict[str, Any]
    ts: float


class ActiveAlarmItem(_Strict):
    code: str
    text: str
    ts: float


class SnapshotMetric(_Strict):
    """A metric as its driver declares it, with its last reported reading."""

    type: Literal["bool", "int", "float", "string"] | None  # None: reported, never declared
    unit: str
    description: str
    writable: bool
    value: bool | int | float | str | None  # None: nothing reported yet
    quality: Quality
    ts: float | None


class DeviceSnapshotPayload(_Payload):
    """Retained on devices/<id>/snapshot: the device now (cellctl/telemetry/snapshot.py)."""

    device: str
    state: StateLabel
    code: int
    reason: str
    connected: bool
    step: SnapshotStep | None
    progress: SnapshotProgress | None
    requests: list[PendingRequestItem]
    alarms: list[ActiveAlarmItem]
    setup: dict[str, str]
    metrics: dict[str, SnapshotMetric]


class HeldStepItem(_Strict):
    step: str
    device: str | None
    reason: str
    attempt: int
    ts: float


class CellPayload(_Payload):
    """Retained on cell: every pending operator request and held step."""

    requests: list[PendingRequestItem]
    held: list[HeldStepItem]


PAYLOADS: dict[str, type[BaseModel]] = {
    "status": Status,
    "spool": SpoolPayload,
    "state": State,
    "samples": SamplesPayload,
    "progress": ProgressPayload,
    "alarm": AlarmPayload,
    "request": RequestPayload,
    "job": JobEventPayload,
    "audit": AuditPayload,
    "reply": Reply,
    "plan": PlanPayload,
    "plan_problem": ProblemPayload,
    "report": ReportPayload,
    "snapshot": DeviceSnapshotPayload,
    "cell": CellPayload,
}


def generate() -> dict[str, dict[str, Any]]:
    assert set(StateLabel.__args__) == {s.label for s in DeviceState}  # type: ignore[attr-defined]
    out: dict[str, dict[str, Any]] = {}
    for name, model in PAYLOADS.items():
        out[f"payload.{name}.json"] = _schema(model, f"cellctl payload: {name}")
    for name, cmd in COMMANDS.items():
        out[f"command.{name}.json"] = _schema(cmd, f"cellctl command: {name}")
    return out


def _schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in generate().items():
        (SCHEMA_DIR / name).write_text(dump(schema))
    print(f"wrote {len(generate())} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
