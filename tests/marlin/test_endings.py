"""Every way a step can end leaves the printer ready: the next job runs normally and
no dead-man timer (M85) is left armed to kill an idle printer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.samples import write_moves, write_short_segments
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.driver import DriverContext
from cellctl.errors import LinkError, StepFailed
from cellctl.model import DeviceState, StepOutcome

QUICK = dict(emulate_link=False, parse_rate=1_000_000, time_factor=100_000)
SLOW = dict(emulate_link=False, parse_rate=1_000_000, time_factor=50)  # moves take time
DRIVER = MarlinOptions(
    position_interval_s=0, deadman_s=30, ok_timeout_s=0.5, ok_timeout_no_keepalive_s=0.5
)


def commands(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


async def next_job_runs_normally(sim: MarlinSim, driver: MarlinDriver, step_for, tmp_path, until):
    """The printer is idle with no dead-man armed; a fresh job then runs, every line
    once, in order, and leaves no dead-man armed either."""
    await until(lambda: not sim.deadman_armed, 10, "dead-man disarmed")
    assert driver.status().state == DeviceState.IDLE, driver.status()
    path = tmp_path / "next.gcode"
    write_short_segments(path, 200, seed=9)
    before = len(sim.executed)
    async with asyncio.timeout(30):
        result = await driver.run(step_for(path, index=5), lambda p: None)
    assert result.outcome == StepOutcome.DONE, result.message
    ran = [c for c in sim.executed[before:] if c.startswith("G1 ")]
    assert ran == commands(path)
    await until(lambda: not sim.deadman_armed, 10, "dead-man disarmed after the job")


async def test_unreconcilable_resend_then_a_normal_job(
    marlin, step_for, tmp_path: Path, until
) -> None:
    """The printer asks for a line that was already counted as acknowledged (its line
    counter went back): what it ran can no longer be matched with the program, so the
    step fails, and the next one runs."""
    path = tmp_path / "job.gcode"
    write_short_segments(path, 2000)
    async with marlin(MarlinSimOptions(**SLOW), DRIVER) as (sim, driver):
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            running = tg.create_task(driver.run(step_for(path), lambda p: None))
            await until(lambda: len(sim.executed) > 60, 20, "the job under way")
            sim.reply("Error:Line Number is not Last Line Number+1, Last Line: 10")
            sim.reply("Resend: 11")
        result = running.result()
        assert result.outcome == StepOutcome.FAILED and "counted as acknowledged" in result.message
        await next_job_runs_normally(sim, driver, step_for, tmp_path, until)


async def test_too_long_line_is_refused_before_anything_moves_then_a_normal_job(
    marlin, step_for, tmp_path: Path, until
) -> None:
    """Marlin keeps 95 characters of a line as sent and drops the rest, checksum
    included. The harm first: let through (max_line raised), such a line is damaged
    on every try and the job dies of resends (the resend limit: the next job still
    runs). By default it is refused up front."""
    path = tmp_path / "long.gcode"
    long_cmd = "M117 " + "x" * 88  # 93 characters: 100+ as sent
    path.write_text(f"G1 X1 F600\n{long_cmd}\nG1 X2\n")
    lax = DRIVER.model_copy(update={"max_line": 110})
    async with marlin(MarlinSimOptions(**QUICK), lax) as (sim, driver):
        async with asyncio.timeout(30):
            result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.FAILED and "file line 2" in result.message
        assert "failed 10 times" in result.message
        assert sim.counters.no_checksum_errors + sim.counters.checksum_errors >= 10
        await next_job_runs_normally(sim, driver, step_for, tmp_path, until)
    async with marlin(MarlinSimOptions(**QUICK), DRIVER) as (sim, driver):
        with pytest.raises(StepFailed, match=r"file line 2 is 10\d characters as sent"):
            await driver.preflight(step_for(path))
        before = list(sim.executed)
        result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "file line 2" in result.message and "max_line 95" in result.message
        assert sim.executed == before  # nothing was sent, no dead-man armed
        await next_job_runs_normally(sim, driver, step_for, tmp_path, until)


async def test_control_bytes_are_refused_naming_the_line(marlin, step_for, tmp_path: Path) -> None:
    path = tmp_path / "junk.gcode"
    path.write_bytes(b"G1 X1\nG1 X\r2 \x00\x7f\n")
    async with marlin(MarlinSimOptions(**QUICK), DRIVER) as (_, driver):
        result = await driver.run(step_for(path), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "file line 2" in result.message and "control byte" in result.message
        assert "\r" not in result.message and "\x00" not in result.message


async def test_cancel_then_a_normal_job(marlin, step_for, tmp_path: Path, until) -> None:
    path = tmp_path / "job.gcode"
    write_moves(path, 2000, length_mm=10, feed=600)
    async with marlin(MarlinSimOptions(**SLOW), DRIVER) as (sim, driver):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(step_for(path), lambda p: None))
            await until(lambda: sim.deadman_armed and len(sim.executed) > 20)
            await driver.stop()
            result = await task
        assert result.outcome == StepOutcome.CANCELLED
        await next_job_runs_normally(sim, driver, step_for, tmp_path, until)


@pytest.mark.parametrize("how", ["emergency stop", "firmware kill"])
async def test_abort_is_logged_with_its_cause_then_reset_and_a_normal_job(
    marlin, step_for, tmp_path: Path, until, how: str
) -> None:
    path = tmp_path / "job.gcode"
    write_moves(path, 2000, length_mm=10, feed=600)
    async with marlin(MarlinSimOptions(**SLOW), DRIVER) as (sim, driver):
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(driver.run(step_for(path), lambda p: None))
                await until(lambda: sim.deadman_armed and len(sim.executed) > 20)
                if how == "emergency stop":
                    await driver.emergency_stop()
                else:
                    sim.kill("Thermal Runaway, system stopped! Heater_ID: 0")
                result = await task
        assert result.outcome == StepOutcome.FAILED
        assert driver.status().state == DeviceState.ABORTED
        aborted = [e for e in logs if e["event"] == "printer aborted"]
        cause = "M112" if how == "emergency stop" else "Thermal Runaway"
        assert aborted and cause in aborted[0]["cause"], logs
        await driver.reset()
        await next_job_runs_normally(sim, driver, step_for, tmp_path, until)


async def test_an_idle_kill_is_logged_with_its_cause(marlin, until) -> None:
    async with marlin(MarlinSimOptions(**QUICK), DRIVER) as (sim, driver):
        with structlog.testing.capture_logs() as logs:
            sim.kill("Inactive time kill")
            await until(lambda: driver.status().state == DeviceState.ABORTED)
        assert any(
            e["event"] == "printer aborted" and "Inactive time kill" in e["cause"] for e in logs
        )


async def test_link_loss_then_reconnect_disarms_the_deadman_and_runs_a_job(
    step_for, tmp_path: Path, until
) -> None:
    path = tmp_path / "job.gcode"
    write_moves(path, 2000, length_mm=10, feed=600)
    async with MarlinSim(MarlinSimOptions(**SLOW)) as sim:
        for attempt in range(2):
            driver = MarlinDriver(DriverContext("printer", endpoint=sim.endpoint), DRIVER)

            async def serve(d: MarlinDriver = driver) -> None:
                with pytest.raises(LinkError):
                    await d.serve()

            async with driver, asyncio.TaskGroup() as tg:
                tg.create_task(serve())
                if attempt == 0:
                    task = tg.create_task(driver.run(step_for(path), lambda p: None))
                    await until(lambda: sim.deadman_armed and len(sim.executed) > 20)
                    sim.host.unplug()
                    result = await task
                    assert result.outcome == StepOutcome.INTERRUPTED
                    assert sim.deadman_armed  # the host is gone: the printer's own guard stays
                    sim.host.replug()
                else:
                    assert not sim.deadman_armed  # the new connection disarmed it
                    await next_job_runs_normally(sim, driver, step_for, tmp_path, until)
                    assert driver.link is not None
                    await driver.link.close()
