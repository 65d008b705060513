"""The plan as a Gantt chart: well-formed SVG, one lane per machine, every job drawn."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planning.instances import build
from planning.test_format import EXAMPLE

from cellctl.cli import main
from cellctl.planning import Objective, parse_problem, plan
from cellctl.planning.gantt import gantt_svg, setup_colours

NS = "{http://www.w3.org/2000/svg}"


def parsed(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything not well-formed
    assert root.tag == f"{NS}svg"
    return root


def of_kind(root: ET.Element, kind: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}rect") if e.get("data-kind") == kind]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), jobs=st.integers(0, 25), machines=st.integers(1, 4))
def test_every_machine_a_lane_every_job_a_bar(seed: int, jobs: int, machines: int) -> None:
    problem = build(
        random.Random(seed), jobs, machines, Objective.WEIGHTED_TARDINESS, operators=True
    )
    result = plan(problem, "instant")
    root = parsed(gantt_svg(problem, result, now=7))
    lanes = [g.get("data-machine") for g in root.iter(f"{NS}g") if g.get("class") == "lane"]
    assert lanes == [m.id for m in problem.machines]
    bars = {e.get("data-job"): e for e in of_kind(root, "job")}
    assert set(bars) == {a.job for a in result.assignments}
    colours = setup_colours(problem)
    setups = {j.id: j.setup for j in problem.jobs}
    for a in result.assignments:
        assert bars[a.job].get("fill") == colours[setups[a.job]]
    changeovers = {e.get("data-job") for e in of_kind(root, "changeover")}
    assert changeovers == {a.job for a in result.assignments if a.changeover}
    manual = {
        e.get("data-job") for e in of_kind(root, "changeover") if e.get("data-manual") == "true"
    }
    assert manual == {
        a.job
        for a in result.assignments
        if a.changeover and problem.is_manual(a.machine, a.setup_before, setups[a.job])
    }
    assert {e.get("data-job") for e in of_kind(root, "clear")} == {
        a.job for a in result.assignments if a.clear_start is not None
    }
    clear = {j.id: j.clear for j in problem.jobs}
    ends = [a.end for a in result.assignments]
    ends += [a.clear_start + clear[a.job] for a in result.assignments if a.clear_start is not None]
    horizon = max([7, *ends])
    shown = [s for s in problem.shifts or () if max(0, s[0]) < min(horizon, s[1])]
    assert len(of_kind(root, "shift")) == len(shown)
    assert [e for e in root.iter(f"{NS}line") if e.get("data-kind") == "now"]


def test_bars_keep_their_order_in_time() -> None:
    problem = build(random.Random(3), 12, 2, Objective.WEIGHTED_TARDINESS)
    result = plan(problem, "instant")
    root = parsed(gantt_svg(problem, result))
    x = {e.get("data-job"): float(e.get("x", "0")) for e in of_kind(root, "job")}
    for seq in result.sequences.values():
        assert [x[j] for j in seq] == sorted(x[j] for j in seq)


def test_names_are_escaped() -> None:
    hostile = json.loads(json.dumps(EXAMPLE))
    hostile["machines"][0]["id"] = 'P<1>&"'
    hostile["setup_times"]['P<1>&"'] = hostile["setup_times"].pop("P1")
    for job in hostile["jobs"]:
        if "P1" in job["durations"]:
            job["durations"]['P<1>&"'] = job["durations"].pop("P1")
    problem = parse_problem(hostile)
    root = parsed(gantt_svg(problem, plan(problem, "instant")))
    assert 'P<1>&"' in [g.get("data-machine") for g in root.iter(f"{NS}g")]


def test_cli_writes_the_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(EXAMPLE))
    out = tmp_path / "plan.svg"
    assert main(["plan", "--problem", str(f), "--method", "instant", "--svg", str(out)]) == 0
    assert "instant: weighted tardiness" in capsys.readouterr().out
    root = parsed(out.read_text())
    assert len([g for g in root.iter(f"{NS}g") if g.get("class") == "lane"]) == 2
    assert main(["plan", "--problem", str(f), "--svg", str(tmp_path / "no" / "x.svg")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_holds_are_drawn_on_the_held_device() -> None:
    doc = json.loads(json.dumps(EXAMPLE))
    doc["machines"].append({"id": "R1", "initial_setup": "gripper"})
    doc["setup_times"]["R1"] = {}
    doc["jobs"][0]["reserves"] = ["R1"]
    problem = parse_problem(doc)
    result = plan(problem, "instant")
    holds = [h for a in result.assignments for h in a.reserved]
    assert holds
    root = parsed(gantt_svg(problem, result))
    drawn = [(e.get("data-job"), e.get("data-machine")) for e in of_kind(root, "hold")]
    assert drawn == [(a.job, d) for a in result.assignments for d, _, _ in a.reserved]
    lanes = [g.get("data-machine") for g in root.iter(f"{NS}g") if g.get("class") == "lane"]
    assert "R1" in lanes
