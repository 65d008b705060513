"""Operator shifts: DST-correct windows, holidays, manual work only inside a shift."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from planning.instances import build, problems

from cellctl.cli import main
from cellctl.planning import (
    Objective,
    Problem,
    ProblemInvalid,
    check,
    evaluate,
    parse_problem,
    plan,
)

H = 60  # minutes


def _problem(calendar: dict[str, Any], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "objective": "weighted_tardiness",
        "time_unit": "min",
        "machines": [{"id": "P1", "initial_setup": "PLA"}],
        "setup_times": {"P1": {"PLA": {"PETG": {"min": 30, "manual": True}}, "PETG": {"PLA": 5}}},
        "jobs": [{"id": "J1", "setup": "PETG", "durations": {"P1": 60}}],
        "calendar": calendar,
    }
    doc.update(extra)
    return doc


NIGHTS = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "22:00", "to": "06:00"}


def test_an_autumn_night_shift_is_nine_hours_and_a_spring_one_seven() -> None:
    autumn = parse_problem(
        _problem(
            {
                "timezone": "Europe/Berlin",
                "start": "2026-10-24T00:00",
                "shifts": [NIGHTS],
                "horizon_days": 3,
            }
        )
    )
    assert autumn.shifts is not None
    # Sat 22:00 → Sun 06:00 spans the change back to CET on 25 October 2026.
    assert autumn.shifts[1] == (22 * H, 22 * H + 9 * H)
    # Monday 06:00 local is 55 real hours after Saturday 00:00.
    assert autumn.shifts[2][1] == 55 * H
    spring = parse_problem(
        _problem(
            {
                "timezone": "Europe/Berlin",
                "start": "2026-03-28T00:00",
                "shifts": [NIGHTS],
                "horizon_days": 3,
            }
        )
    )
    assert spring.shifts is not None
    assert spring.shifts[1] == (22 * H, 22 * H + 7 * H)


def test_holidays_and_overtime_replace_a_day() -> None:
    cal = {
        "timezone": "Europe/Berlin",
        "start": "2026-12-21T00:00",  # a Monday
        "horizon_days": 7,
        "shifts": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "06:00", "to": "14:00"},
            {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "14:00", "to": "22:00"},
        ],
        "exceptions": [
            {"date": "2026-12-24", "shifts": []},
            {"date": "2026-12-25", "shifts": []},
            {"date": "2026-12-26", "shifts": [{"from": "08:00", "to": "12:00"}]},
        ],
    }
    p = parse_problem(_problem(cal))
    day = 24 * H
    # Two shifts touch at 14:00 and merge; Thu 24 and Fri 25 are holidays; Sat 26 overtime.
    assert p.shifts == (
        (6 * H, 22 * H),
        (day + 6 * H, day + 22 * H),
        (2 * day + 6 * H, 2 * day + 22 * H),
        (5 * day + 8 * H, 5 * day + 12 * H),
    )


def test_a_manual_changeover_waits_for_the_shift_an_automatic_one_does_not() -> None:
    cal = {
        "timezone": "UTC",
        "start": "2026-01-05T00:00",
        "horizon_days": 3,
        "shifts": [{"from": "06:00", "to": "14:00"}],
    }
    p = parse_problem(_problem(cal))
    got = plan(p, "instant")
    (a,) = got.assignments
    assert (a.changeover_start, a.start) == (6 * H, 6 * H + 30)
    auto = _problem(cal)
    auto["setup_times"]["P1"]["PLA"]["PETG"] = 30
    (b,) = plan(parse_problem(auto), "instant").assignments
    assert (b.changeover_start, b.start) == (0, 30)


def test_bed_clearing_waits_for_the_operator() -> None:
    cal = {
        "timezone": "UTC",
        "start": "2026-01-05T00:00",
        "horizon_days": 3,
        "shifts": [{"from": "06:00", "to": "14:00"}],
    }
    doc = _problem(cal)
    doc["machines"][0]["initial_setup"] = "PETG"
    doc["jobs"] = [
        {"id": "day", "setup": "PETG", "durations": {"P1": 600}, "clear": 10},
        {"id": "night", "setup": "PETG", "durations": {"P1": 400}, "clear": 10, "after": ["day"]},
        {"id": "next", "setup": "PETG", "durations": {"P1": 60}, "after": ["night"]},
    ]
    p = parse_problem(doc)
    got = {a.job: a for a in plan(p, "anytime", iterations=5).assignments}
    # The day print ends at 10:00, inside the shift: cleared at once. The night
    # print ends at 17:10, after the shift: the bed waits for 06:00 next day.
    assert got["day"].clear_start == 600 and got["night"].start == 610
    assert got["night"].clear_start == 24 * H + 6 * H and got["next"].start == 30 * H + 10
    assert check(p, tuple(got.values())) == plan(p, "instant").figures


def test_a_calendar_cannot_ask_for_millions_of_windows() -> None:
    cal = {
        "timezone": "UTC",
        "start": "2026-01-05T00:00",
        "horizon_days": 366,
        "shifts": [{"from": "06:00", "to": "07:00"}] * 10_000,
    }
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(_problem(cal))
    assert "calendar.shifts: at most 100 weekly shifts, got 10000" in err.value.problems


@pytest.mark.parametrize(
    ("calendar", "line"),
    [
        (
            {"timezone": "Mars/Olympus", "start": "2026-01-05T00:00", "shifts": []},
            "calendar.timezone: unknown time zone",
        ),
        ({"timezone": "UTC", "start": "monday", "shifts": []}, "calendar.start: expected"),
        (
            {
                "timezone": "UTC",
                "start": "2026-01-05T00:00",
                "shifts": [{"from": "25:00", "to": "06:00"}],
            },
            'calendar.shifts[0].from: expected a time "HH:MM"',
        ),
        (
            {
                "timezone": "UTC",
                "start": "2026-01-05T00:00",
                "shifts": [{"from": "06:00", "to": "06:20"}],
            },
            "setup_times.P1.PLA.PETG: a manual changeover of 30 is longer than every",
        ),
        (
            {
                "timezone": "UTC",
                "start": "2026-01-05T00:00",
                "shifts": [{"days": ["moon"], "from": "06:00", "to": "07:00"}],
            },
            "calendar.shifts[0].days: expected a list of mon",
        ),
    ],
)
def test_calendar_mistakes_are_one_line(calendar: dict[str, Any], line: str) -> None:
    with pytest.raises(ProblemInvalid) as err:
        parse_problem(_problem(calendar))
    assert any(p.startswith(line) for p in err.value.problems), err.value.problems


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_no_manual_work_outside_a_shift(problem: Problem) -> None:
    for method in ("fifo", "instant", "anytime"):
        got = plan(problem, method, iterations=4, seed=2)
        assert check(problem, got.assignments) == got.figures  # the checker enforces shifts
        if problem.shifts is None:
            continue
        for a in got.assignments:
            job = next(j for j in problem.jobs if j.id == a.job)
            spans = []
            if problem.is_manual(a.machine, a.setup_before, job.setup):
                spans.append((a.changeover_start, a.changeover_start + a.changeover))
            if job.clear:
                assert a.clear_start is not None
                spans.append((a.clear_start, a.clear_start + job.clear))
            for s, e in spans:
                assert any(ws <= s and e <= we for ws, we in problem.shifts)


def test_lights_out_planning_beats_pushing_changeovers_into_shifts_afterwards() -> None:
    problem = build(
        random.Random(4), 24, 3, Objective.WEIGHTED_TARDINESS, after=False, operators=True
    )
    blind = Problem(problem.objective, problem.machines, problem.setup_times, problem.jobs)
    aware = plan(problem, "anytime", iterations=60, seed=1)
    assert check(problem, aware.assignments) == aware.figures
    # Plan as if an operator were always there, then run those sequences with the
    # shifts: every manual changeover and clearing pushed to the next shift.
    seqs = plan(blind, "anytime", iterations=60, seed=1).sequences
    pushed = evaluate(problem, seqs)
    assert check(problem, pushed.assignments) == pushed.figures
    assert aware.figures.key <= pushed.figures.key
    print(f"\nlights-out: aware {aware.figures.key}, pushed {pushed.figures.key}")


def test_cli_reads_a_calendar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cal = {
        "timezone": "UTC",
        "start": "2026-01-05T00:00",
        "horizon_days": 3,
        "shifts": [{"from": "06:00", "to": "14:00"}],
    }
    f = tmp_path / "p.json"
    f.write_text(json.dumps(_problem(cal)))
    assert main(["plan", "--problem", str(f), "--method", "instant"]) == 0
    assert "(manual changeover 30 min from 360: PLA → PETG)" in capsys.readouterr().out


def test_manual_work_past_the_horizon_is_refused_not_planned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = {
        "timezone": "UTC",
        "start": "2026-01-05T00:00",
        "horizon_days": 1,
        "shifts": [{"from": "06:00", "to": "07:00"}],
    }
    doc = _problem(cal)
    doc["jobs"].append({"id": "J2", "setup": "PLA", "durations": {"P1": 10}, "after": ["J1"]})
    doc["setup_times"]["P1"]["PETG"]["PLA"] = {"min": 30, "manual": True}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    assert main(["plan", "--problem", str(f), "--method", "instant"]) == 1
    assert "extend calendar.horizon_days" in capsys.readouterr().err
