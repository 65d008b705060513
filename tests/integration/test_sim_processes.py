"""Simulators as child processes of the real daemon (`cellctl run`): restarted when they
die, never left behind when the daemon stops or is killed; and a cell loads only the
libraries its devices use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.test_daemon import NotifySocket
from support.ports import free_port

from cellctl.simchild import SimChild, SimulatorExited

BOUND = 60.0  # any one wait; a loaded 2-core machine starts Python processes slowly

CONFIG = """
[cell]
name = "simproc"

[supervisor]
backoff_initial_s = 0.2
backoff_max_s = 1.0
shutdown_timeout_s = 20.0

[devices.printer-1]
driver = "marlin"
backend = "sim"
processes = ["print"]
[devices.printer-1.sim]
time_factor = 20

[devices.mill-1]
driver = "grbl"
backend = "sim"
processes = ["mill"]
[devices.mill-1.sim]
time_factor = 10
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap what it adopts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _wait_for(what: str, cond: Callable[[], bool], bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {bound}s: {what}")


class Cell:
    def __init__(self, tmp_path: Path, config: str = CONFIG) -> None:
        cfg = tmp_path / "cell.toml"
        cfg.write_text(config)
        self.notify = NotifySocket(tmp_path / "notify.sock")
        self.log = tmp_path / "daemon.log"
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "run", str(cfg)],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(self.notify.path)},
        )

    def lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                pass
        return out

    def events(self, event: str, device: str) -> list[dict[str, object]]:
        """Lines of `device` whose event starts with `event` ("device connected" also
        finds "device connected after failures")."""
        return [
            x
            for x in self.lines()
            if str(x.get("event")).startswith(event) and x.get("device") == device
        ]

    def wait_connected(self, *devices: str) -> None:
        for dev in devices:
            _wait_for(f"{dev} connected", lambda d=dev: bool(self.events("device connected", d)))

    def sims(self) -> list[int]:
        return [p for p in _children(self.proc.pid) if "cellctl sim" in _cmdline(p)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(BOUND)
        self._logf.close()


@pytest.fixture
def cell(tmp_path: Path) -> Iterator[Cell]:
    c = Cell(tmp_path)
    try:
        c.notify.wait_for("READY=1", bound=BOUND)
        yield c
    finally:
        c.close()


def test_each_simulator_is_a_child_process_and_sigterm_stops_them_all(cell: Cell) -> None:
    sims = cell.sims()
    assert len(sims) == 2, [_cmdline(p) for p in _children(cell.proc.pid)]
    names = sorted(_cmdline(p).split(" sim ", 1)[1].split()[0] for p in sims)
    assert names == ["grbl", "marlin"]
    cell.wait_connected("printer-1", "mill-1")
    cell.proc.send_signal(signal.SIGTERM)
    assert cell.proc.wait(BOUND) == 0
    assert [p for p in sims if _alive(p)] == []  # stopped before the daemon exited


def test_sigkill_of_the_daemon_leaves_no_simulator_behind(cell: Cell) -> None:
    sims = cell.sims()
    assert len(sims) == 2
    cell.proc.kill()
    cell.proc.wait(BOUND)
    # Nobody stops them: each sees its stdin pipe close and exits by itself.
    _wait_for("every simulator gone", lambda: not any(_alive(p) for p in sims))


def test_a_killed_simulator_is_restarted_and_its_device_reconnects(cell: Cell) -> None:
    (marlin,) = [p for p in cell.sims() if " sim marlin " in _cmdline(p)]
    (grbl,) = [p for p in cell.sims() if " sim grbl " in _cmdline(p)]
    cell.wait_connected("printer-1", "mill-1")
    mill_before = len(cell.events("device", "mill-1"))
    os.kill(marlin, signal.SIGKILL)
    _wait_for(
        "printer-1 connected again",
        lambda: len(cell.events("device connected", "printer-1")) >= 2,
    )
    started = cell.events("simulator started", "printer-1")
    assert len(started) == 2 and started[0]["pid"] == marlin and started[1]["pid"] != marlin
    (exited,) = [
        x
        for x in cell.events("device failed", "printer-1")
        if "killed by signal 9" in str(x.get("error"))
    ]
    assert exited["level"] == "warning"
    assert _alive(grbl) and grbl in cell.sims()  # the other device is untouched
    assert cell.events("device", "mill-1")[mill_before:] == []
    assert cell.proc.poll() is None


def test_in_process_option_keeps_simulators_in_the_daemon(tmp_path: Path) -> None:
    config = CONFIG.replace("[supervisor]\n", '[supervisor]\nsimulators = "in-process"\n')
    c = Cell(tmp_path, config)
    try:
        c.notify.wait_for("READY=1", bound=BOUND)
        c.wait_connected("printer-1", "mill-1")
        assert c.sims() == []
    finally:
        c.close()


async def test_a_simulator_that_cannot_start_says_why() -> None:
    import structlog

    child = SimChild("no-such-sim", None, structlog.get_logger("test"), start_timeout_s=BOUND)
    with pytest.raises(SimulatorExited) as err:
        await child.__aenter__()
    assert "exited with code 2 before it started" in str(err.value)
    assert "unknown simulator 'no-such-sim'" in str(err.value)
    assert not _alive(child.pid)


LOADED = """
import asyncio, json, sys
from cellctl.app import App
from cellctl.config import load

async def main():
    app = App(load(sys.argv[1]))
    run = asyncio.create_task(app.run())
    while not (app.supervisor.started.is_set() and app.supervisor.all_tried()):
        await asyncio.sleep(0.1)
    connects = {i: r.connects for i, r in app.supervisor.runners.items()}
    heavy = sorted(m for m in ("asyncua", "pymodbus", "amqtt", "cryptography", "rich",
                               "google.protobuf", "aiohttp",
                               "cellctl.planning.planner", "multiprocessing",
                               "concurrent.futures.process", "cellctl_drivers.marlin.sim")
                   if m in sys.modules)
    app.request_stop()
    await run
    print(json.dumps({"connects": connects, "heavy": heavy}))

asyncio.run(main())
"""


def test_a_marlin_cell_loads_no_opcua_modbus_broker_or_rich_library(tmp_path: Path) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [cell]
            name = "lean"
            [access]
            allow_anonymous = true
            [mqtt]
            host = "127.0.0.1"
            port = {free_port()}
            embedded = false
            [devices.printer-1]
            driver = "marlin"
            backend = "sim"
            [devices.printer-1.sim]
            time_factor = 20
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", LOADED, str(cfg)],
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["connects"] == {"printer-1": 1}  # it ran, the device connected
    assert result["heavy"] == []


def test_a_reload_that_changes_a_simulator_replaces_its_process_only(
    cell: Cell, tmp_path: Path
) -> None:
    (marlin,) = [p for p in cell.sims() if " sim marlin " in _cmdline(p)]
    (grbl,) = [p for p in cell.sims() if " sim grbl " in _cmdline(p)]
    (tmp_path / "cell.toml").write_text(CONFIG.replace("time_factor = 20", "time_factor = 30"))
    cell.proc.send_signal(signal.SIGHUP)
    _wait_for(
        "printer-1 on a new simulator",
        lambda: any("time_factor=30.0" in _cmdline(p) for p in cell.sims()),
    )
    _wait_for("the old simulator gone", lambda: not _alive(marlin))
    assert grbl in cell.sims()
    _wait_for(
        "printer-1 connected again",
        lambda: len(cell.events("device connected", "printer-1")) >= 2,
    )
