"""The daemon's footprint: RSS and CPU of `cellctl run`, its simulators apart.

    python benchmarks/footprint.py [--sizes 6,20,50] [--window-s 10] [--runs N]

1. Where the memory goes: RSS after each import the daemon makes, in a fresh
   interpreter (the bare interpreter is the baseline).
2. The demo cell (configs/demo.toml, MQTT to a Mosquitto started here) with its
   simulators as child processes, and, as the baseline in the same run, with
   `simulators = "in-process"` (the layout before issue 27): idle, then while a
   print and a milling job run.
3. With `--runs N`: the idle demo started N times, alone and with one more Marlin
   printer: the medians, and what that printer costs the daemon.
4. Cells of N simulated Marlin printers: idle, then while every printer
   prints; the cost per added printer is the slope between the smallest and
   the largest cell.

RSS is VmRSS (resident memory, shared library pages included, as `ps` shows
it); CPU is user+system time over the window divided by its length (100 % = one
core). Each figure is the median of samples taken every second in the window.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"
TICK = os.sysconf("SC_CLK_TCK")
WINDOW_S = 10.0

IMPORT_STEPS = [
    ("bare interpreter", ""),
    ("asyncio, ssl, sqlite3", "import asyncio, ssl, sqlite3"),
    ("pydantic", "import pydantic"),
    ("structlog (without rich)", "import cellctl"),
    ("paho-mqtt", "import paho.mqtt.client"),
    ("cellctl.app (core, jobs, MQTT)", "import cellctl.app"),
    ("marlin driver", "from cellctl.registry import Registry; Registry().driver('marlin')"),
    ("grbl driver", "Registry().driver('grbl')"),
    ("modbus driver (pymodbus)", "Registry().driver('modbus')"),
    ("opcua driver (asyncua, cryptography)", "Registry().driver('opcua')"),
    (
        "simulator options (the config's sim tables)",
        "[Registry().simulator_options(n) for n in Registry().simulator_names()]",
    ),
    (
        "command line (run builds it all)",
        "from cellctl.cli.main import build_parser; build_parser()",
    ),
    ("amqtt (embedded broker only)", "import amqtt.broker"),
    (
        "(not in the daemon) simulator modules",
        "[Registry().simulator(n) for n in Registry().simulator_names()]",
    ),
    ("(not in the daemon) the planner", "import cellctl.planning.planner"),
]

PROBE = """
import sys, time, json
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
for code in json.loads(sys.argv[1]):
    t = time.perf_counter()
    exec(code, globals())
    print(json.dumps([rss(), time.perf_counter() - t]), flush=True)
"""


def import_costs() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([code for _, code in IMPORT_STEPS])],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    print("\n## Where the daemon's memory goes (one fresh interpreter, imports in order)")
    print(f"{'step':<50} {'RSS MiB':>8} {'+MiB':>6} {'import s':>9}")
    prev = 0.0
    for (label, _), (rss, secs) in zip(IMPORT_STEPS, rows, strict=True):
        print(f"{label:<50} {rss:8.1f} {rss - prev:6.1f} {secs:9.3f}")
        prev = rss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto(where: Path) -> Iterator[int | None]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        print("(no mosquitto: the daemon runs without a broker, MQTT retrying)")
        yield free_port()
        return
    port = free_port()
    conf = where / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _mqtt(text: str, port: int, embedded: bool = False) -> str:
    return re.sub(
        r"(?ms)^\[mqtt\].*?(?=^\[(?!mqtt)|\Z)",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nembedded = {str(embedded).lower()}\n\n',
        text,
    )


EXTRA_PRINTER = """
[devices.printer-extra]
driver = "marlin"
backend = "sim"
processes = ["print"]
setup = { material = "PLA", nozzle = "0.4" }
position_interval_s = 2.0
deadman_s = 120
[devices.printer-extra.sim]
time_factor = 20
"""


def demo_config(
    where: Path, port: int, placement: str, embedded: bool = False, extra: bool = False
) -> Path:
    text = _mqtt(DEMO.read_text(), port, embedded) + (EXTRA_PRINTER if extra else "")
    text = text.replace("[supervisor]\n", f'[supervisor]\nsimulators = "{placement}"\n', 1)
    text = text.replace('hotfolder = "state/hotfolder"', f'hotfolder = "{where}/hot"')
    text = text.replace("hotfolder_settle_s = 1.0", "hotfolder_settle_s = 0.2")
    cfg = where / "cell.toml"
    cfg.write_text(text)
    return cfg


def printers_config(where: Path, port: int, n: int) -> Path:
    parts = [
        '[cell]\nname = "footprint"\n',
        "[supervisor]\nbackoff_initial_s = 0.5\nsim_start_timeout_s = 300\n",
        f'[jobs]\nhotfolder = "{where}/hot"\nhotfolder_settle_s = 0.2\n',
        "[access]\nallow_anonymous = true\n",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
    ]
    for i in range(1, n + 1):
        parts.append(
            f'[devices.printer-{i}]\ndriver = "marlin"\nbackend = "sim"\nprocesses = ["print"]\n'
            'setup = { material = "PLA", nozzle = "0.4" }\ndeadman_s = 120\n'
            "position_interval_s = 2.0\n"
            f"[devices.printer-{i}.sim]\ntime_factor = 20\n"
        )
    cfg = where / "cell.toml"
    cfg.write_text("\n".join(parts))
    return cfg


def gcode(lines: int) -> str:
    out = ["G28", "M104 S200", "M140 S60", "G90"]
    for i in range(lines):
        x, y = 20 + (i * 7) % 150, 20 + (i * 13) % 150
        out.append(f"G1 X{x} Y{y} E{i * 0.05:.2f} F3000")
    return "\n".join(out) + "\nM84\n"


BRACKET_NC = "G21\nG90\n" + "".join(f"G1 X{10 + i % 50} Y{10 + i % 30} F500\n" for i in range(400))


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def sample(pid: int, window_s: float) -> dict[str, float]:
    """Median RSS of the daemon and of its children (summed), CPU % over the window."""
    kids = _children(pid)
    d0, k0, t0 = _cpu_ticks(pid), sum(_cpu_ticks(k) for k in kids), time.monotonic()
    rss, kids_rss = [], []
    end = t0 + window_s
    while time.monotonic() < end:
        time.sleep(1.0)
        rss.append(_rss_mib(pid))
        kids_rss.append(sum(_rss_mib(k) for k in kids))
    secs = time.monotonic() - t0
    d1, k1 = _cpu_ticks(pid), sum(_cpu_ticks(k) for k in kids)
    return {
        "rss": statistics.median(rss),
        "cpu": 100 * (d1 - d0) / TICK / secs,
        "kids": len(kids),
        "kids_rss": statistics.median(kids_rss),
        "kids_cpu": 100 * (k1 - k0) / TICK / secs,
    }


class Notify:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def wait_ready(self, bound: float) -> float:
        start = time.monotonic()
        deadline = start + bound
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            if "READY=1" in msg.split("\n"):
                # Read on, as systemd does: STATUS lines keep coming.
                threading.Thread(target=self._drain, daemon=True).start()
                return time.monotonic() - start
        raise RuntimeError(f"the daemon was not ready within {bound}s")

    def _drain(self) -> None:
        self.sock.settimeout(None)
        with contextlib.suppress(OSError):
            while self.sock.recv(4096):
                pass


@contextmanager
def daemon(cfg: Path, ready_s: float) -> Iterator[tuple[int, float]]:
    notify = Notify(cfg.parent / "notify.sock")
    log = (cfg.parent / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
    )
    try:
        yield proc.pid, notify.wait_ready(ready_s)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def job_states(log: Path) -> str:
    """The last state of each job, from the daemon's log: did the work really run?"""
    counts: dict[str, int] = {}
    for state in _last_states(log).values():
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"


def wait_active(log: Path, n: int, bound: float) -> None:
    """Until `n` jobs run (or the bound passes: the window then says how many did)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if sum(s == "active" for s in _last_states(log).values()) >= n:
            return
        time.sleep(0.5)


def _last_states(log: Path) -> dict[str, str]:
    last: dict[str, str] = {}
    for raw in log.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if line.get("event") == "job changed":
            last[str(line["job"])] = str(line["state"])
        elif line.get("event") == "hot folder file rejected":
            last[str(line["file"])] = "rejected: " + str(line.get("reason"))
    return last


def row(label: str, s: dict[str, float], ready: float | None = None) -> None:
    started = f"{ready:7.1f}" if ready is not None else " " * 7
    print(
        f"{label:<34} {started} {s['rss']:8.1f} {s['cpu']:6.2f} "
        f"{int(s['kids']):5d} {s['kids_rss']:9.1f} {s['kids_cpu']:8.2f}"
    )


HEADER = (
    f"{'cell':<34} {'ready s':>7} {'RSS MiB':>8} {'CPU %':>6} "
    f"{'sims':>5} {'sims MiB':>9} {'sims CPU':>8}"
)


def run_demo(
    port: int, placement: str, window_s: float, embedded: bool = False
) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        where = Path(tmp)
        cfg = demo_config(where, port, placement, embedded)
        with daemon(cfg, 180) as (pid, ready):
            time.sleep(3)  # past the first connections' bursts
            idle = sample(pid, window_s)
            if embedded:  # as a new user runs it: no broker, so the daemon starts amqtt
                row("demo as shipped, embedded broker", idle, ready)
                return {"idle": idle}
            row(f"demo, sims {placement}, idle", idle, ready)
            hot = where / "hot"
            hot.mkdir(exist_ok=True)
            (hot / "part.gcode").write_text(gcode(3000))
            (hot / "bracket.toml").write_text(
                'id = "bracket"\n[[route]]\nprocess = "mill"\nprogram = "bracket.nc"\n'
            )
            (hot / "bracket.nc").write_text(BRACKET_NC)
            time.sleep(3)
            busy = sample(pid, window_s)
            row(f"demo, sims {placement}, working", busy)
            print(f"  (jobs at the end of the window: {job_states(where / 'daemon.log')})")
    return {"idle": idle, "busy": busy}


def run_demo_idle(port: int, runs: int, extra: bool) -> list[dict[str, float]]:
    """The demo cell idle, started `runs` times (with one more Marlin printer: `extra`)."""
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
            cfg = demo_config(Path(tmp), port, "process", extra=extra)
            with daemon(cfg, 180) as (pid, ready):
                time.sleep(3)
                out.append(sample(pid, WINDOW_S))
                row("demo + 1 printer, idle" if extra else "demo, idle", out[-1], ready)
    return out


def run_printers(port: int, n: int, window_s: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        where = Path(tmp)
        cfg = printers_config(where, port, n)
        with daemon(cfg, 60 + 10 * n) as (pid, ready):
            time.sleep(3)
            idle = sample(pid, window_s)
            row(f"{n} printers, idle", idle, ready)
            hot = where / "hot"
            hot.mkdir(exist_ok=True)
            program = gcode(3000)
            for i in range(n):
                (hot / f"part-{i}.gcode").write_text(program)
            wait_active(where / "daemon.log", n, 60 + n)
            time.sleep(2)
            busy = sample(pid, window_s)
            row(f"{n} printers, every one printing", busy)
            print(f"  (jobs at the end of the window: {job_states(where / 'daemon.log')})")
    return {"idle": idle, "busy": busy}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="6,20,50")
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--skip-imports", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument(
        "--runs",
        type=int,
        default=0,
        help="also start the idle demo RUNS times, alone and with one more Marlin printer: "
        "medians and the cost of that printer",
    )
    args = p.parse_args()
    global WINDOW_S
    WINDOW_S = args.window_s
    sizes = [int(x) for x in args.sizes.split(",") if x]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()}")
    if not args.skip_imports:
        import_costs()
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as port:
        assert port is not None
        print(f"\n## Daemon and simulators (medians over {args.window_s:.0f} s windows)")
        print(HEADER)
        if not args.skip_demo:
            new = run_demo(port, "process", args.window_s)
            old = run_demo(port, "in-process", args.window_s)
            run_demo(free_port(), "process", args.window_s, embedded=True)
            for state in ("idle", "busy"):
                print(
                    f"demo {state}: daemon RSS {new[state]['rss']:.1f} MiB vs "
                    f"{old[state]['rss']:.1f} MiB in-process "
                    f"(ratio {new[state]['rss'] / old[state]['rss']:.2f}); CPU "
                    f"{new[state]['cpu']:.2f} % vs {old[state]['cpu']:.2f} %"
                )
        if args.runs:
            base = run_demo_idle(port, args.runs, extra=False)
            more = run_demo_idle(port, args.runs, extra=True)
            b_rss = statistics.median(s["rss"] for s in base)
            m_rss = statistics.median(s["rss"] for s in more)
            b_cpu = statistics.median(s["cpu"] for s in base)
            m_cpu = statistics.median(s["cpu"] for s in more)
            print(
                f"demo idle, median of {args.runs}: daemon {b_rss:.1f} MiB, {b_cpu:.2f} % CPU; "
                f"with one more printer {m_rss:.1f} MiB, {m_cpu:.2f} % "
                f"(that printer: {m_rss - b_rss:+.2f} MiB, {m_cpu - b_cpu:+.2f} %); "
                f"load {os.getloadavg()[0]:.1f}"
            )
        cells = {n: run_printers(port, n, args.window_s) for n in sizes}
        pairs = list(itertools.pairwise(sizes))
        if len(sizes) > 2:
            pairs.append((min(sizes), max(sizes)))
        for lo, hi in pairs:
            for state in ("idle", "busy"):
                d_rss = (cells[hi][state]["rss"] - cells[lo][state]["rss"]) / (hi - lo)
                d_cpu = (cells[hi][state]["cpu"] - cells[lo][state]["cpu"]) / (hi - lo)
                k_rss = (cells[hi][state]["kids_rss"] - cells[lo][state]["kids_rss"]) / (hi - lo)
                print(
                    f"per added printer ({state}, {lo}→{hi}): daemon {d_rss:+.2f} MiB, "
                    f"{d_cpu:+.3f} % CPU; its simulator process {k_rss:.1f} MiB"
                )


if __name__ == "__main__":
    main()
