"""GRBL streaming throughput: character counting vs send-response vs a naive sender.

The simulator runs with link emulation at 115200 baud (8N1: 11,520 bytes/s each way)
and an FTDI-style latency timer of 0, 1 and 16 ms, its motion sped up so far that the
wire and the protocol, not the machine, set the pace. For each latency it prints, from
the same run:

- host→device bytes per second ÷ wire capacity (everything on the wire, `?` polls
  included) and payload (program bytes) ÷ wire capacity;
- lines/s ÷ the window-over-round-trip bound, min(wire, 128 B / RTT), where RTT is the
  median time from sending one line to its `ok`, measured by the naive sender in the
  same run;
- the same for the driver in send-response mode, and for a naive sender (one line in
  flight, no driver) as the baseline every ratio is set against.

    python benchmarks/grbl_stream.py            # ~3 repetitions, larger programs
    python benchmarks/grbl_stream.py --quick    # one repetition, well under a minute

Medians over repetitions, since the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from cellctl_drivers.grbl.driver import GrblDriver, GrblOptions
from cellctl_drivers.grbl.sim import GrblSim, GrblSimOptions
from cellctl_drivers.serial import SerialLink

from cellctl.driver import DriverContext
from cellctl.model import Program, ProgramKind, Step, StepOutcome

BAUD = 115200
WIRE = BAUD / 10  # bytes/s, 8N1
WINDOW = 128


def program(n: int, seed: int = 7) -> list[str]:
    """Short CAM-like segments, 9-38 characters (mean ~22), as GRBL jobs mostly are."""
    rng = random.Random(seed)
    lines = ["G21G90G94", "G1F3000"]
    for i in range(n - 2):
        d = rng.randint(1, 4)
        x, y, z = rng.uniform(0, 100), rng.uniform(0, 100), -rng.random()
        line = f"X{x:.{d}f}Y{y:.{d}f}"
        if i % 3 == 0:
            line = f"G1{line}Z{z:.{d}f}"
        lines.append(line)
    return lines


def sim_options(latency_ms: float) -> GrblSimOptions:
    return GrblSimOptions(
        emulate_link=True, baud=BAUD, latency_ms=latency_ms, time_factor=1e6, parse_rate=1e6
    )


@dataclass
class Run:
    seconds: float
    wire_bytes: int
    payload_bytes: int
    lines: int
    rtts: list[float]
    # Medians over 0.5 s slices: the machine is shared, and a stall of this process
    # (another job's CPU burst) is not a property of the protocol.
    p50_wire: float = 0.0
    p50_payload: float = 0.0


class Sampler:
    """Samples (time, host→device bytes, executed lines) while a stream runs."""

    def __init__(self, sim: GrblSim, lines: list[str]) -> None:
        self.sim = sim
        self.samples: list[tuple[float, int, int]] = []
        self.prefix = [0]
        for line in lines:
            self.prefix.append(self.prefix[-1] + len(line) + 1)

    async def run(self) -> None:
        while True:
            self.samples.append(
                (time.perf_counter(), self.sim.host.bytes_in, len(self.sim.executed))
            )
            await asyncio.sleep(0.02)

    def medians(self, slice_s: float = 0.5) -> tuple[float, float]:
        wire: list[float] = []
        payload: list[float] = []
        start = 0
        for i, (t, _, _) in enumerate(self.samples):
            t0, b0, n0 = self.samples[start]
            if t - t0 >= slice_s:
                _, b1, n1 = self.samples[i]
                n0, n1 = min(n0, len(self.prefix) - 1), min(n1, len(self.prefix) - 1)
                wire.append((b1 - b0) / (t - t0))
                payload.append((self.prefix[n1] - self.prefix[n0]) / (t - t0))
                start = i
        if not wire:
            return 0.0, 0.0
        return statistics.median(wire), statistics.median(payload)


def write_program(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


async def driver_run(lines: list[str], latency_ms: float, streaming: str, path: Path) -> Run:
    write_program(path, lines)
    step = Step("bench", 0, "mill", Program(ProgramKind.GCODE, path=path))
    async with GrblSim(sim_options(latency_ms)) as sim:
        ctx = DriverContext(device_id="bench", endpoint=sim.endpoint)
        driver = GrblDriver(ctx, GrblOptions(streaming=streaming))  # type: ignore[arg-type]
        sampler = Sampler(sim, lines)
        async with driver:
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(driver.serve())
                sampling = tg.create_task(sampler.run())
                before = sim.host.bytes_in
                t0 = time.perf_counter()
                result = await driver.run(step, lambda p: None)
                seconds = time.perf_counter() - t0
                wire = sim.host.bytes_in - before
                serving.cancel()
                sampling.cancel()
    if result.outcome != StepOutcome.DONE:
        raise RuntimeError(f"stream failed: {result.message}")
    payload = sum(len(line) + 1 for line in lines)
    return Run(seconds, wire, payload, len(lines), [], *sampler.medians())


async def naive_run(lines: list[str], latency_ms: float) -> Run:
    """One line in flight, wait for `ok`, next: how most simple hosts stream."""
    async with GrblSim(sim_options(latency_ms)) as sim:
        sampler = Sampler(sim, lines)
        link = await SerialLink.open(sim.endpoint, BAUD)
        try:
            link.write_nowait(b"\n")
            while not (await link.readline()).startswith(b"ok"):
                pass
            rtts: list[float] = []
            async with asyncio.TaskGroup() as tg:
                sampling = tg.create_task(sampler.run())
                before = sim.host.bytes_in
                t0 = time.perf_counter()
                for line in lines:
                    sent = time.perf_counter()
                    link.write_nowait(line.encode() + b"\n")
                    while True:
                        reply = await link.readline()
                        if reply.startswith((b"ok", b"error")):
                            break
                    rtts.append(time.perf_counter() - sent)
                seconds = time.perf_counter() - t0
                wire = sim.host.bytes_in - before
                sampling.cancel()
        finally:
            await link.close()
    payload = sum(len(line) + 1 for line in lines)
    return Run(seconds, wire, payload, len(lines), rtts, *sampler.medians())


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds / r.lines)[len(runs) // 2]


async def main(quick: bool) -> None:
    reps = 1 if quick else 3
    n_cc = 1500 if quick else 6000
    n_slow = 150 if quick else 500
    tmp = Path(tempfile.mkdtemp(prefix="grbl-bench-"))
    print(f"GRBL streaming at {BAUD} baud, wire capacity {WIRE:.0f} B/s, RX window {WINDOW} B")
    print(f"character counting: {n_cc} lines; send-response and naive: {n_slow} lines; "
          f"median of {reps}")  # fmt: skip
    header = (
        f"{'latency':>8} {'sender':<20} {'lines/s':>8} {'wire B/s':>9} "
        f"{'wire/cap':>9} {'payload/cap':>12} {'/bound':>7} {'x naive':>8}"
        f" | 0.5s-slice medians: {'wire/cap':>8} {'/bound':>7}"
    )
    print(header)
    for latency in (0.0, 1.0, 16.0):
        naive = median_run([await naive_run(program(n_slow), latency) for _ in range(reps)])
        rtt = statistics.median(naive.rtts)
        bound = min(WIRE, WINDOW / rtt)  # bytes/s the window can carry per round trip
        cc = median_run(
            [
                await driver_run(program(n_cc), latency, "character_counting", tmp / "cc.nc")
                for _ in range(reps)
            ]
        )
        sr = median_run(
            [
                await driver_run(program(n_slow), latency, "send_response", tmp / "sr.nc")
                for _ in range(reps)
            ]
        )
        naive_lps = naive.lines / naive.seconds
        for name, r in (("character counting", cc), ("send-response", sr), ("naive", naive)):
            lps = r.lines / r.seconds
            wire_bps = r.wire_bytes / r.seconds
            payload_bps = r.payload_bytes / r.seconds
            print(
                f"{latency:>6.0f}ms {name:<20} {lps:>8.0f} {wire_bps:>9.0f} "
                f"{wire_bps / WIRE:>9.3f} {payload_bps / WIRE:>12.3f} "
                f"{payload_bps / bound:>7.3f} {lps / naive_lps:>8.2f}"
                f" | {'':>19} {r.p50_wire / WIRE:>8.3f} {r.p50_payload / bound:>7.3f}"
            )
        print(f"{'':>8} (median round trip {rtt * 1000:.2f} ms; bound {bound:.0f} B/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, small programs")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(args.quick))
