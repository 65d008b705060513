"""The snapshot's rules and the report-by-exception filter, as pure logic."""

from __future__ import annotations

from cellctl.config import MetricPolicy, TelemetrySection
from cellctl.model import (
    Alarm,
    DeviceState,
    MetricSpec,
    MetricType,
    OperatorRequest,
    Progress,
    Quality,
    RequestKind,
    Sample,
    StateChanged,
    StepChanged,
    StepProgress,
    StepState,
)
from cellctl.telemetry.policy import SampleFilter
from cellctl.telemetry.snapshot import HeldStep, Snapshots, cell_dict, device_dict

TEMP = MetricSpec("temp", MetricType.FLOAT, "degC", "hotend")


def test_state_step_progress_and_their_end() -> None:
    s = Snapshots(["p1"])
    assert s.device("p1").state == DeviceState.UNAVAILABLE
    s.apply(StateChanged("p1", DeviceState.IDLE, DeviceState.UNAVAILABLE, "connected"))
    s.apply(StepChanged("j1", 0, StepState.RUNNING, StepState.STARTING, "p1"))
    s.apply(StepProgress("p1", "j1/0", Progress(fraction=0.25)))
    snap = s.device("p1")
    assert snap.step is not None and snap.step.key == "j1/0"
    assert snap.progress is not None and snap.progress.fraction == 0.25
    s.apply(StepChanged("j1", 0, StepState.DONE, StepState.RUNNING, "p1"))
    snap = s.device("p1")
    assert snap.step is None and snap.progress is None  # no stale progress


def test_a_held_step_keeps_its_request_until_it_leaves_held() -> None:
    s = Snapshots(["p1"])
    s.apply(StepChanged("j1", 0, StepState.HELD, StepState.RUNNING, "p1", "jam", attempt=2))
    req = OperatorRequest("p1", RequestKind.ACKNOWLEDGE, "step j1/0 held: jam", "j1/0")
    changed = s.apply(req)
    assert changed.cell and changed.devices == {"p1"}
    # The device moving on does not answer the hold.
    s.apply(StateChanged("p1", DeviceState.IDLE, DeviceState.EXECUTE))
    assert [r.step for r in s.device("p1").requests] == ["j1/0"]
    cell = cell_dict(s.cell())
    assert cell["held"][0]["step"] == "j1/0" and cell["held"][0]["attempt"] == 2
    assert cell["requests"][0]["text"] == "step j1/0 held: jam"
    s.apply(StepChanged("j1", 0, StepState.QUEUED, StepState.HELD, "p1"))
    assert s.device("p1").requests == () and s.cell().held == ()


def test_a_device_request_lasts_until_the_device_moves_on() -> None:
    s = Snapshots(["p1"])
    s.apply(StateChanged("p1", DeviceState.HELD, DeviceState.EXECUTE))
    s.apply(OperatorRequest("p1", RequestKind.LOAD_MATERIAL, "M600", "j1/0"))
    assert len(s.device("p1").requests) == 1
    s.apply(StateChanged("p1", DeviceState.EXECUTE, DeviceState.HELD))
    assert s.device("p1").requests == ()


def test_holds_from_before_the_start_come_from_the_job_service() -> None:
    s = Snapshots(["p1"])
    held = [HeldStep("j9/1", "p1", "link lost", 1, 5.0)]
    req = OperatorRequest("p1", RequestKind.ACKNOWLEDGE, "step j9/1 held: link lost", "j9/1")
    changed = s.set_held(held, [req])
    assert changed.cell and "p1" in changed.devices
    snap = s.device("p1")
    assert snap.step is not None and snap.step.key == "j9/1" and snap.step.state == "held"
    assert [r.step for r in snap.requests] == ["j9/1"]
    # Asked again with nothing new: nothing changes.
    assert not s.set_held(held, [req])
    assert not s.set_held(held, [req]).devices


def test_metrics_described_reported_and_stale_while_disconnected() -> None:
    s = Snapshots(["p1"])
    s.describe("p1", [TEMP])
    d = device_dict(s.device("p1"))
    assert d["metrics"]["temp"] == {
        "type": "float",
        "unit": "degC",
        "description": "hotend",
        "writable": False,
        "value": None,
        "quality": "bad",
        "ts": None,
    }
    s.reported("p1", [Sample("temp", 21.5, 100.0), Sample("extra", 3, 100.0)])
    d = device_dict(s.device("p1"))
    assert d["metrics"]["temp"]["value"] == 21.5 and d["metrics"]["temp"]["quality"] == "good"
    assert d["metrics"]["extra"]["type"] == "int"  # reported without a declaration
    s.apply(Alarm("p1", "E1", "hot"))
    s.apply(StateChanged("p1", DeviceState.UNAVAILABLE, DeviceState.IDLE, "disconnected"))
    d = device_dict(s.device("p1"))
    assert d["metrics"]["temp"] == {**d["metrics"]["temp"], "value": 21.5, "quality": "bad"}
    assert d["alarms"][0]["code"] == "E1" and d["connected"] is False


def _filter(**kw: object) -> SampleFilter:
    f = SampleFilter(TelemetrySection.model_validate(kw))
    f.describe("p1", [TEMP, MetricSpec("mode", MetricType.STRING)])
    return f


def test_report_by_exception_uses_the_units_deadband_and_a_heartbeat() -> None:
    f = _filter(heartbeat_s=60)
    assert f.admit("p1", Sample("temp", 20.0, 0.0))  # the first always
    assert not f.admit("p1", Sample("temp", 20.1, 1.0))  # within degC's 0.2
    assert f.admit("p1", Sample("temp", 20.3, 2.0))
    assert f.admit("p1", Sample("temp", 20.3, 3.0, Quality.UNCERTAIN))  # quality changed
    assert f.admit("p1", Sample("mode", "idle", 0.0))
    assert not f.admit("p1", Sample("mode", "idle", 1.0))  # no unit: any change, and none
    assert f.admit("p1", Sample("mode", "run", 2.0))
    assert f.due(30.0) == {}
    beat = f.due(63.0)["p1"]
    assert {s.name for s in beat} == {"temp", "mode"}
    assert f.due(64.0) == {}  # they count as sent
    f.forget("p1")
    assert f.admit("p1", Sample("temp", 20.3, 65.0))  # after a reconnect: sent again


def test_without_report_by_exception_every_sample_passes_unless_a_policy_says() -> None:
    f = _filter(report_by_exception=False)
    assert f.trivial
    g = _filter(report_by_exception=False, metrics={"*/temp": MetricPolicy(deadband=1.0)})
    assert g.admit("p1", Sample("temp", 20.0, 0.0))
    assert not g.admit("p1", Sample("temp", 20.5, 1.0))
    assert g.admit("p1", Sample("mode", "x", 0.0)) and g.admit("p1", Sample("mode", "x", 1.0))
