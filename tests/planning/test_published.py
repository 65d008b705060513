"""The retained `plan` payload and the operator's worklist, from a real plan."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st
from planning.instances import build

from cellctl.planning import Objective, plan
from cellctl.planning.published import PlanPayload, plan_payload

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "cellctl/schemas/payload.plan.json").read_text()
)
ORIGIN = 1_800_000_000.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), jobs=st.integers(0, 20), machines=st.integers(1, 4))
def test_payload_validates_and_says_what_the_plan_says(seed: int, jobs: int, machines: int) -> None:
    problem = build(
        random.Random(seed), jobs, machines, Objective.WEIGHTED_TARDINESS, operators=True
    )
    result = plan(problem, "instant")
    doc = plan_payload(problem, result, origin=ORIGIN, unit_s=60, ts=ORIGIN + 1)
    jsonschema.validate(doc, SCHEMA)
    PlanPayload.model_validate(doc)
    assert list(doc["devices"]) == [m.id for m in problem.machines]
    for mid, seq in result.sequences.items():
        steps = doc["devices"][mid]
        assert [s["job"] for s in steps] == list(seq)
        starts = [s["start"] for s in steps]
        assert starts == sorted(starts)
    by_job = {a.job: a for a in result.assignments}
    for steps in doc["devices"].values():
        for s in steps:
            assert s["start"] == ORIGIN + 60 * by_job[s["job"]].start
    setups = {j.id: j.setup for j in problem.jobs}
    manual = [
        a.job
        for a in result.assignments
        if a.changeover and problem.is_manual(a.machine, a.setup_before, setups[a.job])
    ]
    work = doc["worklist"]
    assert sorted(w["job"] for w in work if w["kind"] == "changeover") == sorted(manual)
    assert sorted(w["job"] for w in work if w["kind"] == "clear") == sorted(
        a.job for a in result.assignments if a.clear_start is not None
    )
    assert [w["start"] for w in work] == sorted(w["start"] for w in work)  # soonest first


def test_schema_file_matches_the_model() -> None:
    from cellctl.telemetry.schemas import generate

    assert generate()["payload.plan.json"] == SCHEMA
