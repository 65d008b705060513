"""File feeding without loading the file, telemetry samples, the standalone simulator."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tracemalloc
from pathlib import Path

import pytest
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.feed import JobFeed
from cellctl_drivers.marlin.gcode import checksum, frame, strip_comment
from cellctl_drivers.marlin.sim import MarlinSimOptions

from cellctl.driver import DriverContext
from cellctl.errors import LinkError, StepFailed
from cellctl.model import Samples, StepOutcome


def test_framing_matches_marlins_checksum() -> None:
    assert frame(0, "M110 N0") == b"N0 M110 N0*125\n"
    body = b"N42 G1 X10 Y20"
    assert frame(42, "G1 X10 Y20") == body + b"*%d\n" % checksum(body)
    assert strip_comment("G1 X1 ; move (fast)") == "G1 X1"
    assert strip_comment("G1 (inline) X2") == "G1  X2"
    assert strip_comment("   ; only a comment") == ""


def test_a_big_file_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "big.gcode"
    line = "G1 X123.456 Y78.901 E0.01234 ; a perimeter segment, as slicers write it\n"
    with path.open("w") as f:
        for _ in range(150_000):  # ~10 MB
            f.write(line)
    tracemalloc.start()
    try:
        feed = JobFeed(path)
        count = 0
        while feed.next() is not None:
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 150_000 and feed.exhausted
    assert peak < 1_000_000, f"peak {peak} bytes while reading a {path.stat().st_size} byte file"


def test_missing_file_is_a_clear_step_failure(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="cannot read G-code file"):
        JobFeed(tmp_path / "nope.gcode")


async def test_missing_file_fails_the_step_and_leaves_the_printer_idle(
    marlin, step_for, tmp_path: Path
) -> None:
    async with marlin(MarlinSimOptions(emulate_link=False)) as (_, driver):
        result = await driver.run(step_for(tmp_path / "nope.gcode"), lambda p: None)
        assert result.outcome == StepOutcome.FAILED and "nope.gcode" in result.message
        assert driver.status().state.label == "idle"


async def test_telemetry_covers_temperatures_position_feed_flow(
    marlin, step_for, tmp_path: Path, until
) -> None:
    events: list = []
    path = tmp_path / "heat.gcode"
    path.write_text("M140 S60\nM104 S200\nM220 S90\nM221 S95\nG1 X10 Y5 Z0.2 F3000\nM109 S200\n")
    opts = MarlinOptions(position_interval_s=0.1)
    async with marlin(MarlinSimOptions(emulate_link=False, time_factor=50), opts, events) as (
        _,
        driver,
    ):
        async with asyncio.timeout(20):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.DONE

        def latest() -> dict:
            out = {}
            for e in events:
                if isinstance(e, Samples):
                    out.update({s.name: s.value for s in e.samples})
            return out

        await until(lambda: {"pos_x", "feed_pct", "flow_pct"} <= latest().keys(), 5)
        # autoreport (M155 S1) shows the heated nozzle within a report or two
        await until(lambda: latest()["hotend_temp"] >= 199, 5, "hot end reported hot")
        values = latest()
        assert values["hotend_target"] == 200
        assert values["bed_target"] == 60
        assert values["pos_x"] == 10 and values["pos_z"] == 0.2
        assert values["feed_pct"] == 90 and values["flow_pct"] == 95
        assert values["uuid"] == "cede2a2f-41a2-4748-9b12-c55c62f367ff"
        assert values["current_line"] == 6
        declared = {m.name for m in driver.metrics()}
        assert set(values) <= declared


async def test_standalone_simulator_prints_a_path_any_client_can_use(tmp_path: Path) -> None:
    exe = shutil.which("cellctl", path=str(Path(sys.executable).parent))
    assert exe is not None
    args = ("sim", "marlin", "--time-factor", "100", "--set", "uuid=abc", "--set", "baud=250000")
    signals = ("--set", "signals=true", "--set", "unplug_s=0.5")
    proc = await asyncio.create_subprocess_exec(
        exe, *args, *signals, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            endpoint = (await proc.stdout.readline()).decode().strip()
        assert endpoint.startswith("/")
        opts = MarlinOptions(expected_uuid="abc")
        driver = MarlinDriver(DriverContext("p", endpoint=endpoint), opts)
        async with asyncio.timeout(10), driver:
            assert driver.info.uuid == "abc" and not driver.advanced_ok and driver.resend_ok
            proc.send_signal(signal.SIGUSR1)  # unplug for half a second
            with pytest.raises(LinkError, match="went away"):
                await driver.serve()
        async with asyncio.timeout(10):
            while True:  # the same path comes back
                again = MarlinDriver(DriverContext("p", endpoint=endpoint), opts)
                try:
                    async with again:
                        break
                except LinkError:
                    await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
