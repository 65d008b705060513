"""What the job-content checks cost, each as a ratio against a baseline in the same run.

1. policy: pre-flight's scan of a sliced program against the Marlin policy (every
   line read as the driver sends it) against the SHA-256 check pre-flight already
   does on the same file (`ProgramStore.verify`).
2. hot folder: a whole scan that turns a dropped file into a job (links refused, the
   file read once within the limits into a private copy, the job committed, the file
   deleted) against `JobService.submit` of the same file (store, metadata, commit):
   the ratio is what the hot folder's checks add.

Medians over repetitions; `--quick` for a short run. Files are in the page cache.

    python benchmarks/preflight_policy.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from jobs.conftest import gcode, make_cell, printer, running
from jobs.test_hotfolder import folder_for

from cellctl import logs
from cellctl.config import JobsSection
from cellctl.jobs import policy
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.jobfiles import gcode_job


def sliced(path: Path, lines: int) -> int:
    path.write_text(gcode(lines, extra="M117 layer change ; a comment as slicers write"))
    return path.stat().st_size


def sha_once(path: Path) -> None:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def median_s(fn: object, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_policy(tmp: Path, lines: int, reps: int) -> None:
    path = tmp / "part.gcode"
    size = sliced(path, lines)
    marlin = policy.policy_for("marlin")
    assert marlin is not None

    def scan() -> None:
        policy._scan.cache_clear()
        assert policy.scan_program(path, marlin) is None

    base = median_s(lambda: sha_once(path), reps)
    cost = median_s(scan, reps)
    mb = size / 1e6
    print(
        f"policy scan, {mb:.1f} MB ({lines} moves): {cost * 1e3:.0f} ms vs sha256 "
        f"{base * 1e3:.0f} ms: {cost / base:.1f}x  ({mb / cost:.1f} MB/s)"
    )


async def bench_hotfolder(tmp: Path, lines: int, reps: int) -> None:
    src = tmp / "src.gcode"
    size = sliced(src, lines)
    cell = make_cell(tmp, {"p1": printer()}, {"dispatch_interval_s": 60})
    direct, scans = [], []
    async with running(cell) as app:
        for i in range(reps):
            # A different file each time (one more move), so that each makes a new job.
            text = src.read_text() + f"G1 X{i % 200} Y1\n"
            own = tmp / f"direct-{i}.gcode"
            own.write_text(text + "G1 X0 Y0\n")
            digest = hashlib.sha256(own.read_bytes()).hexdigest()
            spec = gcode_job(JobsSection(), own, digest, scan_file(own))
            t0 = time.perf_counter()
            await app.jobs.submit(spec, {own.name: own})
            direct.append(time.perf_counter() - t0)
            hot, clock = folder_for(app, tmp / f"r{i}", hotfolder_settle_s=0.0)
            (hot.folder / "part.gcode").write_text(text)
            clock.now = 1.0
            t0 = time.perf_counter()
            [outcome] = await hot.scan_once()
            scans.append(time.perf_counter() - t0)
            assert outcome.accepted, outcome
    base, cost = statistics.median(direct), statistics.median(scans)
    print(
        f"hot folder drop -> job, {size / 1e6:.1f} MB: {cost * 1e3:.0f} ms vs JobService.submit "
        f"of the same file {base * 1e3:.0f} ms: {cost / base:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    logs.configure("warning", "console")
    lines, reps = (20_000, 3) if args.quick else (200_000, 5)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(reps):
            (tmp / f"r{i}").mkdir()
        bench_policy(tmp, lines, reps)
        asyncio.run(bench_hotfolder(tmp, lines, reps))


if __name__ == "__main__":
    main()
