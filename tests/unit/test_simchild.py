"""The pure parts of running a simulator as a child process: the options it is given
and how its log lines enter the daemon's log (the process itself is tested in
tests/integration/test_sim_processes.py)."""

from __future__ import annotations

import json

import structlog
from structlog.testing import capture_logs

from cellctl.cli.main import _parse_sets
from cellctl.registry import Registry
from cellctl.simchild import SimChild, sim_args


def test_the_child_gets_exactly_the_options_the_config_set() -> None:
    options_cls = Registry().simulator("marlin").Options
    options = options_cls.model_validate(
        {"time_factor": 20, "firmware_name": 'Marlin "quoted" = x', "advanced_ok": True}
    )
    args = sim_args("marlin", options)
    assert args[:3] == ["sim", "marlin", "--watch-stdin"]
    sets = [a for a in args[3:] if a != "--set"]
    assert len(sets) == 3  # defaults stay the child's own defaults
    assert options_cls.model_validate(_parse_sets(sets)) == options
    assert sim_args("grbl", None) == ["sim", "grbl", "--watch-stdin"]


def test_child_log_lines_are_relayed_at_their_level_with_the_device() -> None:
    child = SimChild("marlin", None, structlog.get_logger("t").bind(device="p1"))
    child.pid = 4242
    with capture_logs() as logs:
        child._relay_one(
            json.dumps(
                {
                    "event": "fault injected",
                    "level": "warning",
                    "kind": "drop",
                    "timestamp": "x",
                    "device": "spoofed",
                }
            )
        )
        child._relay_one("Traceback (most recent call last):")
        child._relay_one("")
    assert logs == [
        {
            "event": "fault injected",
            "log_level": "warning",
            "kind": "drop",
            "device": "p1",
            "sim_pid": 4242,
        },
        {
            "event": "simulator output",
            "log_level": "warning",
            "line": "Traceback (most recent call last):",
            "device": "p1",
            "sim_pid": 4242,
        },
    ]
