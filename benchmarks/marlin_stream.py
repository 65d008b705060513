"""How close does the Marlin driver stream to the wire's capacity?

A short-segment file (lines of ~30 bytes) is streamed to the simulated
printer over an emulated USB-serial link (8N1 at 115200 and 250000 baud,
FTDI latency timer 0, 1 and 16 ms), with the firmware's parse rate far above
the wire rate so that the wire is the limit. Printed, all from this run:

- wire: host→device bytes per second ÷ capacity (baud/10), and payload
  (G-code bytes, newline included) per second ÷ capacity: the difference is
  the framing (`N<n> ` and `*<xor>`);
- lines/s ÷ the window bound: the largest rate R with R <= wire rate and
  R <= W / round trip, the round trip being line + `ok` on the wire, one USB
  frame, and the adapter's hold time min(latency timer, time for 62 bytes of
  `ok`s to gather at rate R) (with W > 1 the 62-byte rule often beats the timer);
- the same for a naive sender with one line in flight (how most hosts stream);
- stock Marlin (ADVANCED_OK off, BUFSIZE 4, RX_BUFFER_SIZE 128 bytes): the
  driver's counted window (bytes and lines in flight against the receive
  buffer and the ring) vs the naive sender, the ratio between them, and the
  bytes the simulated board lost to a full receive buffer (must be 0). The
  ADVANCED_OK rows above model a 32-bit board built with ADVANCED_OK and a
  1024-byte receive buffer (both ends told so);
- eight simulated printers (simulators in other processes, `cellctl sim
  marlin`) streamed by one event loop at once: aggregate ÷ 8 × capacity,
  p99 from reading an `ok` to writing the next line, event-loop lag p99.

Usage: python benchmarks/marlin_stream.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.gcode import frame
from cellctl_drivers.marlin.samples import write_short_segments
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.driver import DriverContext
from cellctl.model import Program, ProgramKind, Step, StepOutcome

WINDOW = 8  # the simulated firmware's BUFSIZE (ADVANCED_OK reports it)
BIG_RX = 1024  # RX_BUFFER_SIZE of the ADVANCED_OK board
STOCK_RX = 128  # stock RX_BUFFER_SIZE
OK_BYTES = len("ok N12345 P15 B7\n")
STOCK_OK_BYTES = len("ok\n")


def sim_options(
    baud: int, latency_ms: float, window: int = WINDOW, stock: bool = False, corrupt_p: float = 0
) -> MarlinSimOptions:
    if stock:  # stock Marlin: no ADVANCED_OK, BUFSIZE 4, RX 128 (the simulator's defaults)
        return MarlinSimOptions(
            baud=baud, latency_ms=latency_ms, parse_rate=50_000, time_factor=1_000_000,
            planner_size=64, corrupt_p=corrupt_p, seed=2026,
        )  # fmt: skip
    return MarlinSimOptions(
        baud=baud,
        latency_ms=latency_ms,
        parse_rate=50_000,
        time_factor=1_000_000,
        buffer_size=window,
        planner_size=64,
        advanced_ok=True,
        rx_buffer_size=BIG_RX,
    )


def window_bound(
    framed_per_line: float, baud: int, latency_ms: float, w: float, ok_bytes: int = OK_BYTES
) -> float:
    """Lines/s a window of w lines allows over this link (see the module docstring)."""
    cap = baud / 10
    wire = cap / framed_per_line
    fixed = framed_per_line / cap + ok_bytes / cap + 0.001

    def allowed(rate: float) -> float:
        hold = min(latency_ms / 1000, 62 / (rate * ok_bytes)) if w > 1 else latency_ms / 1000
        return w / (fixed + hold)

    if allowed(wire) >= wire:
        return wire
    lo, hi = 0.0, wire  # allowed() grows with the rate: find where it meets the rate
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if allowed(mid) >= mid else (lo, mid)
    return lo


def driver_options(in_flight: int | None, stock: bool = False) -> MarlinOptions:
    return MarlinOptions(
        position_interval_s=0,
        in_flight=in_flight,
        ok_timeout_s=30,
        rx_buffer=STOCK_RX if stock else BIG_RX,
    )


def job_stats(path: Path) -> tuple[int, int, int]:
    """(lines, payload bytes, framed bytes) of the file as the driver sends it."""
    lines = payload = framed = 0
    with path.open() as f:
        for raw in f:
            cmd = raw.strip()
            if cmd:
                lines += 1
                payload += len(cmd) + 1
                framed += len(frame(lines + 10, cmd))  # numbers of similar width
    return lines, payload, framed


async def stream(
    endpoint: str, path: Path, in_flight: int | None, stock: bool = False
) -> tuple[float, MarlinDriver, list[float]]:
    opts = driver_options(in_flight, stock)
    driver = MarlinDriver(DriverContext("bench", endpoint=endpoint), opts)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        step = Step("bench", 0, "print", Program(ProgramKind.GCODE, path=path))
        t0 = time.perf_counter()
        result = await driver.run(step, lambda p: None)
        elapsed = time.perf_counter() - t0
        assert driver.link is not None
        reactions = list(driver.link.reactions)
        serving.cancel()
    if result.outcome != StepOutcome.DONE:
        raise SystemExit(f"stream failed: {result}")
    return elapsed, driver, reactions


async def single(
    path: Path,
    baud: int,
    latency_ms: float,
    in_flight: int | None,
    window: int = WINDOW,
    stock: bool = False,
    corrupt_p: float = 0,
) -> dict:
    async with MarlinSim(sim_options(baud, latency_ms, window, stock, corrupt_p)) as sim:
        before = sim.host.bytes_in
        elapsed, driver, _ = await stream(sim.endpoint, path, in_flight, stock)
        wire_bytes = sim.host.bytes_in - before
        lost = sim.rx_lost_bytes
    lines, payload, framed = job_stats(path)
    cap = baud / 10
    w: float = driver.window_size
    if driver.byte_limit is not None:  # lines of this file that fit the byte window
        w = max(1.0, min(w, driver.byte_limit // (framed / lines)))
    ok_bytes = OK_BYTES if driver.advanced_ok else STOCK_OK_BYTES
    bound = window_bound(framed / lines, baud, latency_ms, w, ok_bytes)
    window = driver.window_size
    return {
        "lost": lost,
        "w": w,
        "lines_s": lines / elapsed,
        "wire": wire_bytes / elapsed / cap,
        "payload": payload / elapsed / cap,
        "bound": bound,
        "vs_bound": lines / elapsed / bound,
        "window": window,
        "elapsed": elapsed,
        "resends": driver.resends_total,
    }


@contextlib.asynccontextmanager
async def external_sims(
    n: int, baud: int, latency_ms: float
) -> AsyncIterator[tuple[list[str], list[int]]]:
    """n simulators, each its own `cellctl sim marlin` process."""
    exe = Path(sys.executable).with_name("cellctl")
    opts = sim_options(baud, latency_ms)
    sets = []
    keys = ("baud", "latency_ms", "parse_rate", "buffer_size", "planner_size", "advanced_ok",
            "rx_buffer_size")  # fmt: skip
    for key in keys:
        sets += ["--set", f"{key}={getattr(opts, key)}"]
    procs = [
        await asyncio.create_subprocess_exec(
            str(exe),
            *("sim", "marlin", "--time-factor", str(opts.time_factor), *sets),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        paths = []
        for p in procs:
            assert p.stdout is not None
            line = (await p.stdout.readline()).decode()
            if not line.startswith("/"):
                raise SystemExit(f"simulator did not start: {line!r}")
            paths.append(line.strip())
        yield paths, [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            await p.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    period = 0.01
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period)
        samples.append(time.perf_counter() - t - period)


async def eight(path: Path, baud: int, latency_ms: float) -> dict:
    async with external_sims(8, baud, latency_ms) as (paths, pids):
        sims_cpu0 = sum(cpu_seconds(p) for p in pids)
        lag: list[float] = []
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            lagger = tg.create_task(loop_lag(lag, stop))
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            runs = [tg.create_task(stream(p, path, None)) for p in paths]
            results = [await r for r in runs]
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            sims_cpu = sum(cpu_seconds(p) for p in pids) - sims_cpu0
            stop.set()
            await lagger
    lines, payload, framed = job_stats(path)
    cap = baud / 10
    ok_send = sorted(x for _, _, reactions in results for x in reactions)
    return {
        "aggregate_vs_8cap": 8 * framed / elapsed / (8 * cap),
        "payload_vs_8cap": 8 * payload / elapsed / (8 * cap),
        "per_printer_s": [round(e, 2) for e, _, _ in results],
        "cpu_us_per_line": 1e6 * cpu / (8 * lines),
        "sim_cpu_us_per_line": 1e6 * sims_cpu / (8 * lines),
        "ok_send_p50_ms": 1000 * statistics.median(ok_send),
        "ok_send_p99_ms": 1000 * ok_send[int(0.99 * (len(ok_send) - 1))],
        "lag_p99_ms": 1000 * sorted(lag)[int(0.99 * (len(lag) - 1))],
        "elapsed": elapsed,
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small files (about a minute)")
    ap.add_argument("--reps", type=int, default=1, help="runs per figure (median printed)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    lines = 1500 if args.quick else 20_000
    naive_lines = 300 if args.quick else 2000
    reps = args.reps
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "short.gcode"
        write_short_segments(path, lines)
        naive_path = Path(d) / "naive.gcode"
        write_short_segments(naive_path, naive_lines)
        n, payload, framed = job_stats(path)
        print(
            f"file: {n} lines, {payload / n:.1f} payload bytes/line, {framed / n:.1f} framed; "
            f"simulated BUFSIZE {WINDOW}; medians of {reps} run(s); {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'baud':>7} {'lat ms':>6} {'sender':>9} {'lines/s':>8} {'wire/cap':>8} "
            f"{'payload/cap':>11} {'bound l/s':>9} {'vs bound':>8}"
        )
        for baud in (115200, 250000):
            for latency in (0.0, 1.0, 16.0):
                cases = [("window", None, path, WINDOW), ("naive", 1, naive_path, WINDOW)]
                if latency == 16.0:  # Marlin's default BUFSIZE: the window is the limit
                    cases.insert(1, ("window", None, path, 4))
                for label, in_flight, p, w in cases:
                    runs = [await single(p, baud, latency, in_flight, w) for _ in range(reps)]
                    w = runs[0]["window"]
                    print(
                        f"{baud:>7} {latency:>6.0f} {label + f'(W={w})':>9} "
                        f"{median_of(runs, 'lines_s'):>8.1f} {median_of(runs, 'wire'):>8.3f} "
                        f"{median_of(runs, 'payload'):>11.3f} {median_of(runs, 'bound'):>9.1f} "
                        f"{median_of(runs, 'vs_bound'):>8.3f}"
                    )
        print(
            "stock Marlin (no ADVANCED_OK, BUFSIZE 4, RX 128 B): counted window vs naive\n"
            f"{'baud':>7} {'lat ms':>6} {'sender':>12} {'lines/s':>8} {'wire/cap':>8} "
            f"{'bound l/s':>9} {'vs bound':>8} {'RX lost B':>9} {'× naive':>8}"
        )
        for baud in (115200, 250000):
            for latency in (0.0, 1.0, 16.0):
                rows = {}
                for label, in_flight, p in (("window", None, path), ("naive", 1, naive_path)):
                    runs = [
                        await single(p, baud, latency, in_flight, stock=True) for _ in range(reps)
                    ]
                    rows[label] = runs
                ratio = median_of(rows["window"], "lines_s") / median_of(rows["naive"], "lines_s")
                for label, runs in rows.items():
                    w = median_of(runs, "w")
                    print(
                        f"{baud:>7} {latency:>6.0f} {label + f'(W~{w:.0f})':>12} "
                        f"{median_of(runs, 'lines_s'):>8.1f} {median_of(runs, 'wire'):>8.3f} "
                        f"{median_of(runs, 'bound'):>9.1f} {median_of(runs, 'vs_bound'):>8.3f} "
                        f"{max(r['lost'] for r in runs):>9d} "
                        + (f"{ratio:>8.2f}" if label == "window" else f"{'':>8}")
                    )
        print(
            "stock Marlin, 1 % of lines corrupted on the wire: the counted window's recovery\n"
            f"{'baud':>7} {'lat ms':>6} {'lines/s':>8} {'÷ clean':>8} {'resends':>8} "
            f"{'RX lost B':>9}"
        )
        for baud in (115200, 250000):
            for latency in (0.0, 1.0, 16.0):
                clean = [await single(path, baud, latency, None, stock=True) for _ in range(reps)]
                noisy = [
                    await single(path, baud, latency, None, stock=True, corrupt_p=0.01)
                    for _ in range(reps)
                ]
                ratio = median_of(noisy, "lines_s") / median_of(clean, "lines_s")
                print(
                    f"{baud:>7} {latency:>6.0f} {median_of(noisy, 'lines_s'):>8.1f} "
                    f"{ratio:>8.3f} {median_of(noisy, 'resends'):>8.0f} "
                    f"{max(r['lost'] for r in noisy):>9d}"
                )
        eight_lines = 1000 if args.quick else 5000
        eight_path = Path(d) / "eight.gcode"
        write_short_segments(eight_path, eight_lines)
        for baud, latency in ((115200, 1.0), (250000, 1.0)):
            r = await eight(eight_path, baud, latency)
            print(
                f"8 printers x {eight_lines} lines @ {baud} baud, {latency:.0f} ms "
                f"(sims in 8 processes): aggregate wire ÷ 8×capacity {r['aggregate_vs_8cap']:.3f}"
                f" (payload {r['payload_vs_8cap']:.3f}); ok→send p50 {r['ok_send_p50_ms']:.2f} ms,"
                f" p99 {r['ok_send_p99_ms']:.2f} ms; event-loop lag p99 {r['lag_p99_ms']:.1f} ms;"
                f" CPU per line: daemon {r['cpu_us_per_line']:.0f} µs, simulators"
                f" {r['sim_cpu_us_per_line']:.0f} µs;"
                f" per printer {r['per_printer_s']} s; load average {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
