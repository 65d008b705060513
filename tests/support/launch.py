"""Run the real daemon (cellctl.app) with the in-test drivers registered.

Used by tests that start the daemon as a subprocess: `python tests/support/launch.py CONFIG`.
The only difference from `cellctl run` is the registry, which also knows `fake`
(foundation tests), `jobsim` (jobs tests) and `testdev` (MQTT tests).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.jobdevice import JobDriver, JobSim
from mqtt.mqtt_testdev import TestDriver, TestSim

from cellctl import logs
from cellctl.app import App
from cellctl.config import load
from cellctl.errors import CellError, ConfigError
from cellctl.registry import Registry
from support.fake import FakeDriver, FakeSim

REGISTRY = Registry(
    extra_drivers={"fake": FakeDriver, "jobsim": JobDriver, "testdev": TestDriver},
    extra_sims={"fake": FakeSim, "jobsim": JobSim, "testdev": TestSim},
)


def main() -> int:
    try:
        cell = load(sys.argv[1], REGISTRY)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    logs.configure(cell.config.logging.level.value, "json")
    try:
        return asyncio.run(App(cell, REGISTRY).run())
    except CellError as exc:  # as `cellctl run` does: one line, no traceback
        print(f"cellctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
