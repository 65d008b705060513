"""The offline problem format, its JSON Schema, and `cellctl plan --problem`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cellctl.cli import main
from cellctl.planning import Objective, ProblemInvalid, check, parse_problem, plan, plan_to_json

SCHEMAS = Path(__file__).resolve().parents[2] / "cellctl" / "schemas"
PROBLEM_SCHEMA = json.loads((SCHEMAS / "problem.json").read_text())
PLAN_SCHEMA = json.loads((SCHEMAS / "plan.json").read_text())

EXAMPLE: dict[str, Any] = {
    "objective": "weighted_tardiness",
    "time_unit": "min",
    "machines": [
        {"id": "P1", "initial_setup": "PLA-0.4", "free_at": 0},
        {"id": "P2", "initial_setup": "PETG-0.4", "free_at": 30},
    ],
    "setup_times": {
        "P1": {
            "PLA-0.4": {"PETG-0.4": 8, "PLA-0.6": 12, "PLA-0.4": 0},
            "PETG-0.4": {"PLA-0.4": 12, "PLA-0.6": 20},
            "PLA-0.6": {"PLA-0.4": 10, "PETG-0.4": 18},
        },
        "P2": {
            "PETG-0.4": {"PLA-0.4": 14},
            "PLA-0.4": {"PETG-0.4": 9},
        },
    },
    "jobs": [
        {
            "id": "J001",
            "setup": "PETG-0.4",
            "durations": {"P1": 48, "P2": 61},
            "release": 0,
            "due": 812,
            "weight": 2,
            "after": [],
        },
        {"id": "J002", "setup": "PLA-0.4", "durations": {"P1": 30, "P2": 35}, "due": 60},
        {"id": "J003", "setup": "PLA-0.6", "durations": {"P1": 90}, "due": 200, "after": ["J002"]},
        {"id": "J004", "setup": "PETG-0.4", "durations": {"P2": 40}, "release": 50},
    ],
}


def test_example_parses_validates_and_plans() -> None:
    jsonschema.validate(EXAMPLE, PROBLEM_SCHEMA)
    problem = parse_problem(EXAMPLE)
    assert problem.objective is Objective.WEIGHTED_TARDINESS
    assert problem.changeover("P1", "PETG-0.4", "PLA-0.6") == 20
    assert [j.after for j in problem.jobs] == [(), (), ("J002",), ()]
    got = plan(problem, "anytime", iterations=5)
    out = plan_to_json(problem, got)
    jsonschema.validate(out, PLAN_SCHEMA)
    assert check(problem, got.assignments) == got.figures
    assert {j["id"] for j in out["jobs"]} == {"J001", "J002", "J003", "J004"}


def _with(path: str, value: Any) -> dict[str, Any]:
    """EXAMPLE with one value replaced (path like 'jobs/0/durations'); _DROP removes it."""
    doc = copy.deepcopy(EXAMPLE)
    *parents, last = path.split("/")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key: Any = int(last) if isinstance(node, list) else last
    if value is _DROP:
        del node[key]
    else:
        node[key] = value
    return doc


_DROP = object()

BAD = [
    (
        _with("jobs/0/durations", {"P1": 48, "P9": 3}),
        "jobs[0] (J001).durations.P9: unknown machine P9",
        False,
    ),
    (_with("setup_times/P2/PETG-0.4", {}), "setup_times.P2.PETG-0.4.PLA-0.4: missing", False),
    (_with("jobs/1/durations", {}), "jobs[1] (J002).durations: no machine can run it", True),
    (_with("jobs/1/after", ["J003"]), "jobs: a cycle in `after`: J002 → J003 → J002", False),
    (
        _with("jobs/1/after", ["J002"]),
        "jobs[1] (J002).after[0]: a job cannot come after itself",
        False,
    ),
    (_with("jobs/1/after", ["nope"]), 'jobs[1] (J002).after[0]: unknown job "nope"', False),
    (
        _with("objective", "fastest"),
        'objective: expected one of weighted_tardiness, makespan, got "fastest"',
        True,
    ),
    (
        _with("jobs/0/durations/P1", 4.5),
        "jobs[0] (J001).durations.P1: expected an integer ≥ 0, got 4.5",
        True,
    ),
    (
        _with("jobs/0/durations/P1", True),
        "jobs[0] (J001).durations.P1: expected an integer ≥ 0, got True",
        True,
    ),
    (_with("jobs/0/release", -1), "jobs[0] (J001).release: expected an integer ≥ 0, got -1", True),
    (
        _with("jobs/0/durations/P1", 10**12),
        "jobs[0] (J001).durations.P1: at most 1,000,000,000, got 1000000000000",
        True,
    ),
    (_with("jobs/0/colour", "red"), "jobs[0] (J001).colour: unknown key", True),
    (_with("machines/1/id", "P1"), "machines[1].id: machine P1 is defined twice", False),
    (_with("jobs/1/id", "J001"), "jobs[1] (J001).id: job J001 is defined twice", False),
    (
        _with("setup_times/P1/PLA-0.4/PLA-0.4", 3),
        "setup_times.P1.PLA-0.4.PLA-0.4: a setup to itself takes 0, got 3",
        False,
    ),
    (_with("setup_times/P7", {}), "setup_times.P7: unknown machine P7", False),
    (_with("setup_times", _DROP), "setup_times: missing", True),
    (_with("machines", []), "machines: expected a non-empty list, got []", True),
]


@pytest.mark.parametrize(("doc", "line", "schema_sees_it"), BAD)
def test_a_mistake_is_one_line_naming_it(
    doc: dict[str, Any], line: str, schema_sees_it: bool
) -> None:
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(doc)
    assert any(p.startswith(line) for p in err.value.problems), err.value.problems
    if schema_sees_it:  # the rest are rules a JSON Schema cannot state
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, PROBLEM_SCHEMA)


def test_every_mistake_at_once_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _with("jobs/0/durations", {"P9": 3})
    doc["jobs"][2]["after"] = ["J003"]
    doc["machines"][0]["free_at"] = "soon"
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    assert main(["plan", "--problem", str(f)]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert lines == [
        f'{f}: machines[0].free_at: expected an integer ≥ 0, got "soon"',
        f"{f}: jobs[0] (J001).durations.P9: unknown machine P9",
        f"{f}: jobs[2] (J003).after[0]: a job cannot come after itself",
        "problem invalid: 3 mistakes",
    ]
    assert cap.out == ""


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (None, "file not found"),
        (b'{"objective": ', "not JSON: Expecting value (line 1, column 15)"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"[1, 2]", "expected a JSON object at the top, got list"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_unreadable_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, line: str
) -> None:
    f = tmp_path / "p.json"
    if content is not None:
        f.write_bytes(content)
    assert main(["plan", "--problem", str(f)]) == 2
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err


def test_cli_prints_the_plan_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(EXAMPLE))
    for method in ("fifo", "group", "greedy", "instant"):
        assert main(["plan", "--problem", str(f), "--method", method]) == 0
        out = capsys.readouterr().out
        assert f"{method}: weighted tardiness " in out and "makespan" in out
    assert main(["plan", "--problem", str(f), "--budget-s", "0.05", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, PLAN_SCHEMA)
    assert doc["method"] == "anytime"
    assert main(["plan", "--problem", str(f), "--budget-s", "-1"]) == 2
    assert "--budget-s must be ≥ 0" in capsys.readouterr().err
