"""Run the real daemon (cellctl.app.App) with the in-test machine registered.

`python tests/jobs/launch_jobs.py CONFIG`: the only difference from `cellctl run`
is the registry, which also knows the `jobsim` driver and simulator.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.jobdevice import JobDriver, JobSim

from cellctl import logs
from cellctl.app import App
from cellctl.config import load
from cellctl.errors import ConfigError
from cellctl.registry import Registry

REGISTRY = Registry(extra_drivers={"jobsim": JobDriver}, extra_sims={"jobsim": JobSim})


def main() -> int:
    try:
        cell = load(sys.argv[1], REGISTRY)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    logs.configure(cell.config.logging.level.value, "json")
    return asyncio.run(App(cell, REGISTRY).run())


if __name__ == "__main__":
    sys.exit(main())
