"""The live plan on the bus: the retained `plan` and `plan/problem` topics, as the
planner re-plans (real broker, real App), read back by `cellctl plan -c` and
`cellctl status` (the worklist), and replayed offline from `--export`."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, write_config

from cellctl.cli.main import main
from cellctl.planning import parse_problem, plan
from cellctl.telemetry import service as mqtt_service
from cellctl.telemetry.topics import Topics

SCHEMAS = Path(__file__).resolve().parents[2] / "cellctl" / "schemas"
PLANNER = '[scheduler]\nmethod = "planner"\nbudget_s = 0.05\n'


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"payload.{name}.json").read_text())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


async def test_plan_published_retained_validated_and_read_back(
    tmp_path: Path,
    broker: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt_service, "REPORT_INTERVAL_S", 0.5)
    cfg = write_config(tmp_path / "cell.toml", broker.port, devices=2, telemetry=PLANNER)
    cell = load(cfg)
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything]).start()
    cmd = Commander(sub, topics)
    keys = {f"{m}-{i}/0" for m in ("pla", "petg") for i in (1, 2)}

    def plans() -> list[dict[str, Any]]:
        return [m.json() for m in sub.messages if m.topic == topics.plan]

    def full(doc: dict[str, Any]) -> bool:
        return {s["job"] for steps in doc["devices"].values() for s in steps} == keys

    due = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    try:
        async with running_app(cell):
            await sub.online()
            for material in ("PLA", "PETG"):
                for i in (1, 2):
                    job = {
                        "job": f"{material.lower()}-{i}",
                        "due": due,
                        "steps": [
                            {"process": "print", "gcode": "G28\n", "setup": {"material": material}}
                        ],
                    }
                    r = await cmd.send("submit", job)
                    assert r["outcome"] == "accepted", r
            # Nobody answers the changeovers: the four steps stay planned.
            await sub.wait_for(lambda: any(full(d) for d in plans()), "a plan with all four")
            doc = next(d for d in plans() if full(d))
            jsonschema.validate(doc, schema("plan"))
            assert set(doc["devices"]) == {"d1", "d2"}
            work = doc["worklist"]
            assert work and all(w["kind"] == "changeover" for w in work)
            assert [w["start"] for w in work] == sorted(w["start"] for w in work)
            problems = [m.json() for m in sub.messages if m.topic == topics.plan_problem]
            prob = next(p for p in problems if p["origin"] == doc["origin"])
            jsonschema.validate(prob, schema("plan_problem"))
            replay = plan(parse_problem(prob["problem"]), "instant")
            assert {a.job for a in replay.assignments} == keys
            # Rate-limited: re-plans on every change, at most one plan per 2 s goes out.
            stamps = [d["ts"] for d in plans()]
            assert all(b - a >= 1.9 for a, b in itertools.pairwise(stamps)), stamps

            # A late reader gets the retained plan at once: the CLI, in a thread.
            c = str(cfg)
            svg, export = tmp_path / "plan.svg", tmp_path / "problem.json"
            rc, out, err = await asyncio.to_thread(
                cli, capsys, "plan", "-c", c, "--svg", str(svg), "--export", str(export)
            )
            assert rc == 0, err
            assert "d1:" in out and "d2:" in out and "operator worklist:" in out, out
            assert all(k in out for k in keys), out
            lanes = ET.parse(svg).getroot().findall(".//{http://www.w3.org/2000/svg}g")
            assert sorted(g.get("data-machine") for g in lanes) == ["d1", "d2"]
            rc, out, err = await asyncio.to_thread(
                cli, capsys, "plan", "--problem", str(export), "--method", "instant"
            )
            assert rc == 0 and all(k in out for k in keys), (out, err)
            rc, out, err = await asyncio.to_thread(cli, capsys, "status", "-c", c, "--json")
            assert rc == 0, err
            listed = json.loads(out)["worklist"]
            assert listed and {w["device"] for w in listed} <= {"d1", "d2"}
            assert all(w["kind"] == "changeover" for w in listed)
            # The shift report, retained (since the daemon started; nothing done yet).
            await sub.wait_for(lambda: bool(sub.on("/report")), "a retained report")
            report = sub.on("/report")[-1]
            assert report.topic == topics.report
            jsonschema.validate(report.json(), schema("report"))
            assert report.json()["jobs_done"] == 0 and report.json()["fifo"] is None
    finally:
        sub.stop()
