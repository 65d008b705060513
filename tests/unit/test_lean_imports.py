"""What the daemon does not import (issue 27: the daemon alone under 80 MiB).

Each simulator runs in a process of its own, so the daemon checks a config's
`[devices.<id>.sim]` tables with the options classes alone (entry points
`cellctl.simulator_options`): never the simulators, whose Modbus server package
also loads aiohttp once the panel extra is installed. The planner and the
G-code scanner's worker pool load only when used. Each check runs in a fresh
interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cellctl.registry import Registry

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from cellctl.cli.main import build_parser
from cellctl.config import load
import cellctl.app

build_parser()  # `cellctl run` builds the whole command line first
cell = load(sys.argv[1])
print(json.dumps({"devices": sorted(cell.devices), "modules": sorted(sys.modules)}))
"""

NEVER_IN_THE_DAEMON = (
    "cellctl_drivers.marlin.sim",
    "cellctl_drivers.grbl.sim",
    "cellctl_drivers.grbl.firmware",
    "cellctl_drivers.modbus.sim",
    "cellctl_drivers.opcua.sim",
    "pymodbus.server",
    "aiohttp",
    "amqtt",
    "rich",
    "cellctl.planning.planner",
    "cellctl.planning.search",
    "cellctl.planning.gantt",
    "multiprocessing",
    "concurrent.futures.process",
)


def test_the_demo_config_loads_no_simulator_planner_or_worker_pool() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "configs" / "demo.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"cell-plc", "robot1", "printer-1", "mill-1"} <= set(result["devices"])
    modules = set(result["modules"])
    loaded = sorted(
        m for m in NEVER_IN_THE_DAEMON if any(x == m or x.startswith(m + ".") for x in modules)
    )
    assert loaded == []
    # The options it checked with are light modules of their own.
    assert {f"cellctl_drivers.{d}.simoptions" for d in ("marlin", "grbl", "modbus", "opcua")} <= (
        modules
    )


def test_each_simulators_options_class_is_the_one_the_simulator_runs_with() -> None:
    reg = Registry()
    names = reg.simulator_names()
    assert {"marlin", "grbl", "modbus-plc", "opcua-robot"} <= set(names)
    for name in names:
        assert reg.simulator_options(name) is reg.simulator(name).Options, name


def test_a_simulator_without_an_options_entry_point_is_checked_with_its_own_class() -> None:
    from cellctl_drivers.marlin.sim import MarlinSim

    reg = Registry(extra_sims={"test-marlin": MarlinSim})
    assert reg.simulator_options("test-marlin") is MarlinSim.Options
