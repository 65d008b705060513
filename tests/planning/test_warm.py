"""A re-plan that starts from an earlier plan (`plan(..., start=...)`)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from planning.instances import build, problems

from cellctl.cli import main
from cellctl.planning import Objective, Problem, check, plan

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(max_jobs=8))
def test_a_warm_start_is_never_made_worse(problem: Problem) -> None:
    earlier = plan(problem, "instant")
    got = plan(problem, "anytime", iterations=3, seed=1, start=earlier.sequences)
    assert check(problem, got.assignments) == got.figures
    assert got.figures.key <= earlier.figures.key
    again = plan(problem, "anytime", iterations=3, seed=1, start=earlier.sequences)
    assert again.sequences == got.sequences


@SETTINGS
@given(problems(max_jobs=8, reserves=True))
def test_a_stale_start_still_gives_a_whole_feasible_plan(problem: Problem) -> None:
    """The start names jobs and machines that are gone, puts a job where it cannot run,
    lacks jobs, and may contradict `after`: the plan still holds every job."""
    earlier = plan(problem, "fifo").sequences
    rng = random.Random(len(problem.jobs))
    stale = {m: [*reversed(seq), "gone"] for m, seq in earlier.items()}
    stale["no-such-machine"] = [j.id for j in problem.jobs]
    if problem.jobs:
        dropped = rng.choice(problem.jobs).id
        stale = {m: [j for j in seq if j != dropped] for m, seq in stale.items()}
    got = plan(problem, "anytime", iterations=2, start=stale)
    assert check(problem, got.assignments) == got.figures
    assert sorted(a.job for a in got.assignments) == sorted(j.id for j in problem.jobs)


def test_a_warm_start_keeps_the_pins() -> None:
    problem = build(random.Random(8), 12, 3, Objective.WEIGHTED_TARDINESS, after=False)
    first = plan(problem, "instant")
    m0 = problem.machines[0].id
    pins = tuple(reversed(first.sequences[m0]))[:2]
    pinned = dataclasses.replace(problem, pinned={m0: pins})
    got = plan(pinned, "anytime", iterations=5, start=first.sequences)
    assert got.sequences[m0][: len(pins)] == pins
    check(pinned, got.assignments)


def test_the_cli_improves_an_earlier_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = build(random.Random(9), 15, 3, Objective.WEIGHTED_TARDINESS)
    raw = {
        "objective": problem.objective.value,
        "machines": [{"id": m.id, "initial_setup": m.initial_setup} for m in problem.machines],
        "setup_times": problem.setup_times,
        "jobs": [
            {
                "id": j.id,
                "setup": j.setup,
                "durations": dict(j.durations),
                "release": j.release,
                "due": j.due,
                "weight": j.weight,
                "after": list(j.after),
            }
            for j in problem.jobs
        ],
    }
    f = tmp_path / "p.json"
    f.write_text(json.dumps(raw))
    assert main(["plan", "--problem", str(f), "--method", "fifo", "--json"]) == 0
    earlier = json.loads(capsys.readouterr().out)
    g = tmp_path / "fifo.json"
    g.write_text(json.dumps(earlier))
    assert (
        main(["plan", "--problem", str(f), "--start", str(g), "--budget-s", "0.1", "--json"]) == 0
    )
    better = json.loads(capsys.readouterr().out)
    key = ("weighted_tardiness", "changeover", "makespan")
    assert [better["figures"][k] for k in key] <= [earlier["figures"][k] for k in key]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"machines": {"M0": [1]}}))
    assert main(["plan", "--problem", str(f), "--start", str(bad)]) == 2
    assert "machines: expected an object machine → [job ids]" in capsys.readouterr().err
    assert main(["plan", "--problem", str(f), "--start", str(g), "--method", "fifo"]) == 2
    assert "--start needs --method anytime" in capsys.readouterr().err
    assert main(["plan", "--problem", str(f), "--start", str(tmp_path / "none.json")]) == 2
    assert "none.json: file not found" in capsys.readouterr().err
