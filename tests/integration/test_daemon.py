"""The daemon as a real subprocess: systemd notify, reload on SIGHUP, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import LAUNCH

CONFIG = """
[cell]
name = "itest"

[supervisor]
shutdown_timeout_s = 5.0
connect_timeout_s = 1.0
backoff_initial_s = 0.2

[devices.p1]
driver = "fake"
backend = "sim"

[devices.p2]
driver = "fake"
backend = "sim"
fail_connects = 100
"""


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, bound: float = 10.0) -> str:
        deadline = time.monotonic() + bound
        for msg in self.messages:
            if field in msg.split("\n"):
                return msg
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(msg)
            if field in msg.split("\n"):
                return msg
        raise AssertionError(f"no {field} within {bound}s; got {self.messages}")


class Daemon:
    def __init__(self, config: Path, notify: NotifySocket, env: dict[str, str]) -> None:
        self.log = config.parent / "daemon.log"
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCH), str(config)],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify.path), **env},
        )

    def lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                pass
        return out

    def wait_log(self, event: str, bound: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line {event!r} within {bound}s:\n{self.log.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._logf.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.sock.close()


@pytest.fixture
def daemon(tmp_path: Path, notify: NotifySocket) -> Iterator[Daemon]:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG)
    d = Daemon(cfg, notify, {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": ""})
    yield d
    d.close()


def test_ready_watchdog_status_and_clean_stop(daemon: Daemon, notify: NotifySocket) -> None:
    ready = notify.wait_for("READY=1")
    # READY comes once every device was tried: p1 connected, p2 failed at least once.
    assert "STATUS=2 devices: " in ready
    notify.wait_for("WATCHDOG=1", bound=2.0)
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 5.0 + 1.0
    notify.wait_for("STOPPING=1", bound=1.0)
    events = [line.get("event") for line in daemon.lines()]
    assert "cell stopped" in events


def test_sighup_with_broken_config_keeps_the_old_one(
    daemon: Daemon, notify: NotifySocket, tmp_path: Path
) -> None:
    notify.wait_for("READY=1")
    (tmp_path / "cell.toml").write_text(CONFIG.replace('driver = "fake"', "driver = 42", 1))
    daemon.proc.send_signal(signal.SIGHUP)
    rejected = daemon.wait_log("new config rejected; keeping the running one")
    assert any("devices.p1.driver" in p for p in rejected["problems"])  # type: ignore[union-attr]
    assert daemon.proc.poll() is None, "a bad reload never stops the daemon"
    # A good config afterwards is applied: p2 removed, p1 untouched.
    (tmp_path / "cell.toml").write_text(CONFIG.split("[devices.p2]")[0])
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = daemon.wait_log("config reloaded")
    assert reloaded["actions"] == {"p1": "unchanged", "p2": "removed"}
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0


def test_bad_config_at_start_exits_2_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG.replace("fail_connects = 100", 'fail_connects = "many"'))
    proc = subprocess.run(
        [sys.executable, "-m", "cellctl", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # `cellctl check` uses the installed registry, where `fake` does not exist.
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: devices.p1.driver: unknown driver 'fake'" in proc.stderr


def test_sighup_with_a_config_that_could_not_start_keeps_the_old_one(
    daemon: Daemon, notify: NotifySocket, tmp_path: Path
) -> None:
    """A reload refuses what `cellctl check` and `cellctl run` refuse (cellctl/startcheck.py)."""
    notify.wait_for("READY=1")
    cfg = tmp_path / "cell.toml"
    cfg.write_text(CONFIG.replace('name = "itest"', 'name = "itest"\nstate_dir = "cell.toml"', 1))
    daemon.proc.send_signal(signal.SIGHUP)
    rejected = daemon.wait_log("new config rejected; keeping the running one")
    assert rejected["problems"] == [
        f"{cfg}: cell.state_dir: state directory {cfg}: {cfg} is not a directory"
    ]
    assert daemon.proc.poll() is None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
