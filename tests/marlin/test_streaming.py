"""Loss-free streaming: corruption, resends, dropped oks, slicer output, Held, resume."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.samples import write_short_segments, write_sliced
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.driver import DriverContext
from cellctl.errors import LinkError
from cellctl.model import OperatorRequest, RequestKind, StepOutcome

# Fast but faithful: no link pacing, a parse rate far above what the pty carries,
# motion sped up so that the planner never limits the stream. Stock Marlin otherwise
# (no ADVANCED_OK, BUFSIZE 4, a 128-byte receive buffer, `ok` after `Resend:`).
STOCK_FAST = dict(emulate_link=False, parse_rate=1_000_000, time_factor=100_000)
FAST = dict(STOCK_FAST, buffer_size=16)


async def test_20000_lines_with_1pct_corruption_run_exactly_once_in_order(
    marlin, step_for, commands_of, job_executed, tmp_path: Path
) -> None:
    """Stock Marlin, the counted window on: every line once, in order, no byte lost."""
    path = tmp_path / "segments.gcode"
    write_short_segments(path, 20_000)
    sim_opts = MarlinSimOptions(**STOCK_FAST, corrupt_p=0.01, seed=2026)
    async with marlin(sim_opts) as (sim, driver):
        assert not driver.advanced_ok and driver.resend_ok
        assert driver.window_size == 4 and driver.byte_limit == 127
        async with asyncio.timeout(50):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert sim.rx_lost_bytes == 0
        assert result.last_line == 20_000
        expected = [c for _, c in commands_of(path)]
        assert job_executed(sim) == expected  # every line once, in order
        noise = sim.faults.counters
        assert noise.lines_corrupted >= 100  # ~1 % of the lines really were hit
        assert sim.counters.checksum_errors + sim.counters.line_number_errors > 0
        assert sim.counters.undetected_corruptions == 0
        print(
            f"\n20000 lines, {noise.lines_corrupted} corrupted: resends {driver.resends_total}, "
            f"checksum errors {sim.counters.checksum_errors}, "
            f"line-number errors {sim.counters.line_number_errors}"
        )


async def test_multi_byte_noise_is_counted(marlin, step_for, job_executed, tmp_path: Path) -> None:
    """Bursts of 3 bytes: an 8-bit XOR misses some. Reported, not asserted."""
    path = tmp_path / "segments.gcode"
    write_short_segments(path, 3000)
    # ADVANCED_OK: an `ok N` says which line it answers, so a burst that turns a line
    # into an unnumbered command (its `ok` has no N) costs no count.
    sim_opts = MarlinSimOptions(**FAST, advanced_ok=True, corrupt_p=0.2, corrupt_bytes=3, seed=5)
    drv_opts = MarlinOptions(position_interval_s=0, ok_timeout_s=0.5, ok_timeout_no_keepalive_s=0.5)
    async with marlin(sim_opts, drv_opts) as (sim, driver):
        async with asyncio.timeout(30):
            result = await driver.run(step_for(path), lambda p: None)
        hit = sim.faults.counters.lines_corrupted
        slipped = sim.counters.undetected_corruptions
        print(
            f"\nburst noise: {hit} lines hit with 3 bytes each, {slipped} passed the checks "
            f"({100 * slipped / max(1, hit):.2f} %), outcome {result.outcome}"
        )
        assert hit > 300 and 0 <= slipped <= hit


async def test_dropped_oks_and_spurious_resends(
    marlin, step_for, commands_of, job_executed, tmp_path: Path
) -> None:
    path = tmp_path / "segments.gcode"
    write_short_segments(path, 2000)
    sim_opts = MarlinSimOptions(**FAST, drop_reply_p=0.03, spurious_resend_p=0.01, seed=11)
    async with marlin(
        sim_opts,
        MarlinOptions(position_interval_s=0, ok_timeout_s=0.5, ok_timeout_no_keepalive_s=0.5),
    ) as (
        sim,
        driver,
    ):
        async with asyncio.timeout(30):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert job_executed(sim) == [c for _, c in commands_of(path)]
        assert sim.faults.counters.replies_dropped > 10
        assert sim.counters.spurious_resends > 5


async def test_a_line_that_always_fails_gives_up_with_a_clear_fault(
    marlin, step_for, tmp_path: Path
) -> None:
    """A line the firmware cuts (over its 95 characters, let through by a raised
    `max_line`) loses its checksum on every try."""
    path = tmp_path / "segments.gcode"
    write_short_segments(path, 200)
    path.write_text("M117 " + "y" * 90 + "\n" + path.read_text())
    drv = MarlinOptions(position_interval_s=0, max_resends=5, max_line=110)
    async with marlin(MarlinSimOptions(**FAST), drv) as (_, driver):
        async with asyncio.timeout(20):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "failed 5 times" in result.message and "file line 1" in result.message


async def test_realistic_sliced_file_runs_to_the_end(
    marlin, step_for, commands_of, job_executed, tmp_path: Path
) -> None:
    path = tmp_path / "part.gcode"
    n = write_sliced(path, layers=20, segments_per_layer=200, filament_change_layer=10)
    assert n > 4000
    events: list = []
    sim_opts = MarlinSimOptions(emulate_link=False, time_factor=500, buffer_size=8)
    progress: list = []
    async with marlin(sim_opts, events=events) as (sim, driver):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(step_for(path), progress.append))
            async with asyncio.timeout(30):
                while not any(isinstance(e, OperatorRequest) for e in events):
                    await asyncio.sleep(0.02)
            request = next(e for e in events if isinstance(e, OperatorRequest))
            assert request.kind == RequestKind.LOAD_MATERIAL and request.step_key == "job1/0"
            assert driver.status().state.label == "held"
            await driver.resume()
            async with asyncio.timeout(60):
                result = await task
        assert result.outcome == StepOutcome.DONE, result.message
        assert job_executed(sim) == [c for _, c in commands_of(path)]
        assert progress[-1].fraction == 1.0 and progress[-1].lines_done == n
        assert any(p.remaining_s is not None for p in progress)
        assert sim.bed.target == 0 and sim.hotend.target == 0  # the end block ran


async def test_resume_from_a_chosen_line_sends_the_preamble(
    marlin, step_for, commands_of, job_executed, tmp_path: Path
) -> None:
    path = tmp_path / "part.gcode"
    write_sliced(path, layers=6, segments_per_layer=50, filament_change_layer=None)
    cmds = commands_of(path)
    start_line = cmds[len(cmds) // 2][0]
    sim_opts = MarlinSimOptions(emulate_link=False, time_factor=1000)
    async with marlin(sim_opts) as (sim, driver):
        async with asyncio.timeout(30):
            result = await driver.run(step_for(path, start_line=start_line), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        ran = job_executed(sim)
        rest = [c for line, c in cmds if line >= start_line]
        assert ran[-len(rest) :] == rest
        preamble = ran[: -len(rest)]
        assert preamble[:4] == ["M140 S60", "M104 S215", "M190 S60", "M109 S215"]
        assert "G28 X Y" in preamble and "M83" in preamble
        assert preamble[-1].startswith("G92 E")


async def test_m0_holds_until_the_operator_resumes(
    marlin, step_for, job_executed, tmp_path: Path
) -> None:
    path = tmp_path / "m0.gcode"
    path.write_text("G28\nG1 X10 F3000\nM0 ; check the first layer\nG1 X20\n")
    events: list = []
    async with marlin(MarlinSimOptions(emulate_link=False, time_factor=100), events=events) as (
        sim,
        driver,
    ):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(step_for(path), lambda p: None))
            async with asyncio.timeout(10):
                while driver.status().state.label != "held":
                    await asyncio.sleep(0.02)
            req = [e for e in events if isinstance(e, OperatorRequest)]
            assert req and req[0].kind == RequestKind.ACKNOWLEDGE
            assert "G1 X20" not in sim.executed
            await driver.resume()
            async with asyncio.timeout(10):
                result = await task
        assert result.outcome == StepOutcome.DONE
        assert job_executed(sim) == ["G28", "G1 X10 F3000", "M0", "G1 X20"]


async def test_deadman_m85_shuts_the_printer_down_when_the_host_vanishes(
    step_for, tmp_path: Path, until
) -> None:
    path = tmp_path / "long.gcode"
    path.write_text("".join(f"G1 X{i % 2 * 10} F600\n" for i in range(500)))
    sim_opts = MarlinSimOptions(emulate_link=False, time_factor=100)
    async with MarlinSim(sim_opts) as sim:
        ctx = DriverContext("printer", endpoint=sim.endpoint)
        driver = MarlinDriver(ctx, MarlinOptions(position_interval_s=0, deadman_s=1))

        async def serve_until_gone() -> None:
            with pytest.raises(LinkError):
                await driver.serve()

        async with driver, asyncio.TaskGroup() as tg:
            tg.create_task(serve_until_gone())
            task = tg.create_task(driver.run(step_for(path), lambda p: None))
            await until(lambda: "M85 S1" in sim.executed and len(sim.executed) > 20)
            assert driver.link is not None
            await driver.link.close()  # the daemon is gone: nothing more arrives
            async with asyncio.timeout(10):
                result = await task
            assert result.outcome == StepOutcome.INTERRUPTED
            await until(lambda: sim.killed, 10, "the printer kills itself")


@pytest.mark.parametrize(("baud", "latency_ms", "seed"), [(115_200, 16, 2), (250_000, 1, 3)])
async def test_corruption_on_a_paced_link_recovers_without_overflow(
    marlin, step_for, commands_of, job_executed, tmp_path: Path, baud: int, latency_ms: float,
    seed: int,
) -> None:  # fmt: skip
    """The wire paced as a real one: lines sent after a refused one are still on their
    way when Marlin empties its buffer, and each is refused again on arrival. Before
    the stream waited for them (and let their late refusals pass), this ended in a
    resend storm (the step failed with hundreds of bytes lost) on every seed."""
    path = tmp_path / "segments.gcode"
    write_short_segments(path, 800)
    sim_opts = MarlinSimOptions(
        emulate_link=True, baud=baud, latency_ms=latency_ms, parse_rate=1_000_000,
        time_factor=100_000, corrupt_p=0.03, seed=seed,
    )  # fmt: skip
    async with marlin(sim_opts, MarlinOptions(baud=baud, position_interval_s=0)) as (sim, driver):
        assert driver.window_size == 4
        async with asyncio.timeout(60):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert sim.rx_lost_bytes == 0
        corrupted = sim.faults.counters.lines_corrupted
        assert corrupted >= 10
        assert job_executed(sim) == [c for _, c in commands_of(path)]
        # one request per damaged line, about: not a storm of copies refusing each other
        assert driver.resends_total <= 3 * corrupted, (driver.resends_total, corrupted)
