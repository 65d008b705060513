"""The demo cell, its daemon and its panel, for the panel's tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

DEMO = Path(__file__).parents[2] / "configs" / "demo.toml"
BOUND = 60.0

ACCESS = """[access]
allow_anonymous = true
everyone = ["estop", "jobs"]

[access.users]
panel = ["frontend"]
alice = ["planner"]
bob = ["viewer"]
"""


def demo_config(where: Path, port: int, embedded: bool = False, **panel: object) -> Path:
    """configs/demo.toml on the test's broker (or its own embedded one on `port`), state in
    `where`, users and a [panel]."""
    text = DEMO.read_text()
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nembedded = {str(embedded).lower()}\n'
    text = re.sub(r"(?ms)^\[mqtt\].*\Z", mqtt, text)
    text = re.sub(r"(?ms)^\[access\].*?(?=^\[mqtt\])", ACCESS + "\n", text)  # and [panel]
    settings = {
        "port": 0,
        "mqtt_username": "panel",
        "command_timeout_s": 30,
        "spool_dir": "spool",
        **panel,
    }
    text += "\n[panel]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    path = where / "demo.toml"
    path.write_text(text)
    return path


def cellctl(*argv: str, timeout: float = BOUND) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cellctl", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def new_key(config: Path, user: str) -> str:
    done = cellctl("apikey", "add", user, "-c", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].strip()


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "cellctl", *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def spooled(where: Path) -> list[Path]:
    """Spool files the panel left behind."""
    return list(where.glob("**/cellctl-panel-*"))


@contextlib.asynccontextmanager
async def process(argv: list[str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A cellctl subprocess, stopped with SIGTERM (bounded) on exit."""
    proc = spawn(argv, log)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
