"""Runs the daemon (`cellctl run`'s App) on a config, with the in-test device registered."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_rig import REGISTRY, load

from cellctl import logs
from cellctl.app import App

if __name__ == "__main__":
    logs.configure("info", "json")
    sys.exit(asyncio.run(App(load(Path(sys.argv[1])), REGISTRY).run()))
