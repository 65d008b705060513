"""A job file's relative due date counts from the file's time, so reading it again is
the same job; the operator's change text names only what changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cellctl.jobs.spec import JobRejected, parse_job_toml
from cellctl.planning.published import change_text

JOB = '{due}\n[[route]]\nprocess = "print"\nprogram = "a.gcode"\n'
AT = 1_800_000_000.0


@pytest.mark.parametrize(
    ("due", "seconds"), [('"+90m"', 5400), ('"+2h"', 7200), ('"+1.5d"', 129600)]
)
def test_relative_due_counts_from_the_file(due: str, seconds: int) -> None:
    spec = parse_job_toml(JOB.format(due=f"due = {due}"), "j.toml", "j", received=AT)
    assert spec.due == datetime.fromtimestamp(AT + seconds, UTC)
    again = parse_job_toml(JOB.format(due=f"due = {due}"), "j.toml", "j", received=AT)
    assert again == spec


def test_absolute_due_unchanged_and_nonsense_refused() -> None:
    spec = parse_job_toml(JOB.format(due="due = 2027-01-15T10:00:00Z"), "j.toml", "j")
    assert spec.due == datetime(2027, 1, 15, 10, tzinfo=UTC)
    with pytest.raises(JobRejected, match="due"):
        parse_job_toml(JOB.format(due='due = "+2 weeks"'), "j.toml", "j", received=AT)


def test_change_text_names_what_changes() -> None:
    assert change_text("colour=red,material=pla,nozzle=0.4", "material=petg,nozzle=0.4") == (
        "material=pla → material=petg"
    )
    assert change_text("", "material=petg") == "(none) → material=petg"
    assert change_text("A", "B") == "A → B"  # offline labels: as they are
