"""The operator page's pure parts: the sign-in rate limit and the view kept from MQTT
(messages fed by hand, as paho's thread hands them to the loop)."""

from __future__ import annotations

import json

from cellctl.cli.mqtt import Target
from cellctl.panel.live import HISTORY_S, CellView
from cellctl.panel.sessions import RateLimit
from cellctl.telemetry.topics import Topics


def test_the_rate_limit_slows_a_source_and_never_locks_it_out() -> None:
    limit = RateLimit(3, 60.0)
    assert [limit.take("10.0.0.9", now=t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert limit.take("10.0.0.9", now=3.0) == 57.0  # wait until the first attempt ages out
    assert limit.take("10.0.0.7", now=3.0) == 0.0  # another source is not affected
    assert limit.take("10.0.0.9", now=60.5) == 0.0  # the window moved on: one more
    assert limit.take("10.0.0.9", now=60.6) > 0


def _view() -> tuple[CellView, list[tuple[str, object]]]:
    view = CellView(Target("127.0.0.1", 1883, Topics("demo")))
    q = view.subscribe()
    seen: list[tuple[str, object]] = []

    def drain() -> None:
        while not q.empty():
            item = q.get_nowait()
            assert item is not None
            seen.append(item)

    view.drain = drain  # type: ignore[attr-defined]
    return view, seen


def _feed(view: CellView, rel: str, body: object) -> None:
    view._handle(f"{view.base}/{rel}", json.dumps(body).encode())


def snapshot(state: str, temp: float, ts: float) -> dict[str, object]:
    return {
        "v": 1, "ts": ts, "device": "p1", "state": state, "code": 4, "reason": "",
        "connected": True, "step": None, "progress": None, "requests": [], "alarms": [],
        "setup": {}, "metrics": {"hotend_temp": {"type": "float", "unit": "degC",
                                                 "value": temp, "quality": "good", "ts": ts}},
    }  # fmt: skip


def test_the_view_applies_changes_and_the_retained_snapshot_corrects_it_after_a_reconnect() -> None:
    view, seen = _view()
    _feed(view, "devices/p1/samples", {"v": 1, "ts": 1.0, "device": "p1", "samples": []})
    assert view.devices == {}  # nothing to apply a change to before the snapshot
    _feed(view, "status", {"v": 1, "ts": 1.0, "state": "online", "reason": "", "boot": 1})
    _feed(view, "devices/p1/snapshot", snapshot("idle", 20.0, 1000.0))
    _feed(view, "devices/p1/state", {"state": "execute", "reason": "printing"})
    sample = {"name": "hotend_temp", "value": 200.5, "ts": 1010.0, "quality": "good"}
    _feed(view, "devices/p1/samples", {"v": 1, "ts": 1010.0, "device": "p1", "samples": [sample]})
    _feed(view, "devices/p1/progress", {"v": 1, "ts": 1011.0, "device": "p1", "fraction": 0.5})
    p1 = view.devices["p1"]
    assert p1["state"] == "execute" and p1["metrics"]["hotend_temp"]["value"] == 200.5
    assert p1["progress"] == {"fraction": 0.5}
    # The link drops; meanwhile the device stopped. The broker's retained snapshot, sent
    # again on the resubscribe, replaces what the panel held.
    view._handle(f"{view.base}/$link", b"down")
    assert view.online is False
    _feed(view, "devices/p1/snapshot", snapshot("aborted", 180.0, 1100.0))
    assert view.devices["p1"]["state"] == "aborted"
    assert view.devices["p1"]["progress"] is None
    whole = view.whole()
    assert whole["devices"]["p1"]["metrics"]["hotend_temp"]["value"] == 180.0
    # The chart's buffer: each reading once, in time order.
    assert whole["history"]["p1"]["hotend_temp"] == [
        (1000.0, 20.0),
        (1010.0, 200.5),
        (1100.0, 180.0),
    ]
    view.drain()  # type: ignore[attr-defined]
    kinds = [k for k, _ in seen]
    assert kinds == ["status", "device", "device", "device", "device", "status", "device"]


def test_the_chart_buffer_keeps_an_hour_of_numbers_only() -> None:
    view, _ = _view()
    _feed(view, "devices/p1/snapshot", snapshot("idle", 20.0, 0.0))
    for t in range(1, 400):
        items = [
            {"name": "hotend_temp", "value": float(t), "ts": t * 20.0, "quality": "good"},
            {"name": "firmware", "value": "Marlin", "ts": t * 20.0, "quality": "good"},
            {"name": "door_closed", "value": True, "ts": t * 20.0, "quality": "good"},
        ]
        _feed(
            view, "devices/p1/samples", {"v": 1, "ts": t * 20.0, "device": "p1", "samples": items}
        )
    points = view.history["p1"]["hotend_temp"]
    assert set(view.history["p1"]) == {"hotend_temp"}
    assert points[-1] == (399 * 20.0, 399.0)
    assert points[-1][0] - points[0][0] <= HISTORY_S
    assert len(points) == int(HISTORY_S / 20) + 1
