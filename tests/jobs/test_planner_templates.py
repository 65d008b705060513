"""Changeover models per device: templates for many alike machines, one device's own
times over its template's, and `cellctl check` naming the file, the key and what was
expected. A config with no model plans Marlin and GRBL setups with the defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jobs.conftest import REGISTRY

from cellctl.config import parse
from cellctl.errors import ConfigError
from cellctl.jobs.dispatch import Candidate, DeviceView
from cellctl.jobs.live_problem import Snapshot, build_problem, label


def cell_data(scheduler: dict[str, Any], devices: tuple[str, ...]) -> dict[str, Any]:
    dev = {"driver": "marlin", "backend": "sim", "processes": ["print"]}
    return {
        "cell": {"name": "t"},
        "scheduler": {"method": "planner", **scheduler},
        "devices": {d: dict(dev) for d in devices},
    }


TEMPLATED = {
    "templates": {
        "mk4": {
            "devices": ["mk4-*"],
            "changeover": {"material": {"seconds": 240}},
            "bed_clearing": True,
        },
        "mill": {"devices": ["cnc"], "automatic": ["tool"]},
    },
    "devices": {"mk4-3": {"changeover": {"material": {"seconds": 420}}}},
    "changeover": {"material": {"seconds": 500}},
}


def test_templates_and_a_devices_own_times_plan_per_device(tmp_path: Path) -> None:
    names = ("mk4-1", "mk4-2", "mk4-3", "old", "cnc")
    cell = parse(tmp_path / "cell.toml", cell_data(TEMPLATED, names), REGISTRY)
    sched = cell.config.scheduler
    assert [sched.key_change("material", d).seconds for d in names] == [240, 240, 420, 500, 500]
    assert sched.key_change("nozzle", "mk4-1").seconds == 900  # not in the template: default
    assert [sched.clears_bed(d) for d in names] == [True, True, True, False, False]
    assert sched.automatic_keys("cnc") == ("tool",) and sched.automatic_keys("old") == ()

    now = 1000.0
    devs = {
        d: DeviceView(d, frozenset({"print"}), {"material": "PLA"}, True)
        for d in names
        if d != "cnc"
    }
    step = Candidate("j/0", "j", 0, 1, 0, "print", {"material": "PETG"}, estimated_s=60.0)
    problem = build_problem(Snapshot(now, (step,), devs), sched)
    pla, petg = label({"material": "PLA"}), label({"material": "PETG"})
    assert {d: problem.changeover(d, pla, petg) for d in devs} == {
        "mk4-1": 240,
        "mk4-2": 240,
        "mk4-3": 420,
        "old": 500,
    }


def test_no_model_plans_marlin_and_grbl_setups_with_the_defaults() -> None:
    from cellctl.scheduler_config import SchedulerSection

    cfg = SchedulerSection.model_validate({"method": "planner"})
    devs = {
        "printer": DeviceView(
            "printer", frozenset({"print"}), {"material": "PLA", "nozzle": "0.4"}, True
        ),
        "mill": DeviceView("mill", frozenset({"mill"}), {"tool": "T1", "fixture": "vise"}, True),
    }
    steps = (
        Candidate("p/0", "p", 0, 1, 0, "print", {"material": "PETG", "nozzle": "0.6"}),
        Candidate("m/0", "m", 0, 2, 0, "mill", {"tool": "T2", "fixture": "plate"}),
    )
    problem = build_problem(Snapshot(0.0, steps, devs), cfg)
    pr = (label({"material": "PLA", "nozzle": "0.4"}), label({"material": "PETG", "nozzle": "0.6"}))
    ml = (label({"tool": "T1", "fixture": "vise"}), label({"tool": "T2", "fixture": "plate"}))
    assert problem.changeover("printer", *pr) == 600 + 900
    assert problem.changeover("mill", *ml) == 180 + 900
    assert problem.is_manual("printer", *pr) and problem.is_manual("mill", *ml)


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (
            {"templates": {"mk4": {"devices": ["prusa-*"]}}},
            r"cell.toml: .*scheduler.templates.mk4.devices: 'prusa-\*' matches no device",
        ),
        (
            {"templates": {"a": {"devices": ["p*"]}, "b": {"devices": ["p1"]}}},
            r"scheduler.templates: device 'p1' is in 2 templates \(a, b\); expected at most one",
        ),
        (
            {"devices": {"p9": {"changeover": {"material": {"seconds": 1}}}}},
            r"scheduler.devices.p9: expected a device id in \[devices\], got 'p9'",
        ),
        (
            {"devices": {"p1": {"template": "nope"}}},
            r"scheduler.*devices.p1.template: expected a name in \[scheduler.templates\]",
        ),
        (
            {"templates": {"mk4": {"devices": ["p1"], "changeover": {"material": {"s": 1}}}}},
            r"scheduler.templates.mk4.changeover.material",
        ),
        (
            {"automatic": {"zz": ["tool"]}},
            r"scheduler.automatic: expected a device id in \[devices\], got 'zz'",
        ),
    ],
)
def test_model_mistakes_name_file_key_and_expectation(
    tmp_path: Path, scheduler: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse(tmp_path / "cell.toml", cell_data(scheduler, ("p1", "p2")), REGISTRY)


def test_cellctl_check_reports_a_template_naming_no_device(tmp_path: Path) -> None:
    path = tmp_path / "cell.toml"
    path.write_text(
        '[cell]\nname = "t"\n'
        '[devices.p1]\ndriver = "marlin"\nbackend = "sim"\nprocesses = ["print"]\n'
        '[scheduler.templates.mk4]\ndevices = ["mk4-*"]\n'
        "[scheduler.templates.mk4.changeover.material]\nseconds = 240\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "cellctl", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "scheduler.templates.mk4.devices: 'mk4-*' matches no device" in out.stdout + out.stderr
