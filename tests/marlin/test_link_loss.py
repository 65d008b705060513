"""Unplug mid-job, reconnect through the supervisor, wrong machine, M112, firmware reset."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest
from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions
from cellctl_drivers.marlin.samples import write_moves
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions

from cellctl.config import DeviceCommon, DeviceConfig, SupervisorSection
from cellctl.driver import DriverContext
from cellctl.errors import WrongDevice
from cellctl.model import DeviceState, Event, StateChanged, StepOutcome
from cellctl.registry import Registry
from cellctl.supervisor import DeviceRunner

POLICY = SupervisorSection(
    backoff_initial_s=0.05, backoff_max_s=0.3, connect_timeout_s=5, stable_after_s=0
)


def _runner(dev_id: str, port: str, events: list[Event]) -> DeviceRunner:
    cfg = DeviceConfig(
        id=dev_id,
        common=DeviceCommon(driver="marlin", processes=("print",)),
        options=MarlinOptions(port=port, position_interval_s=0, ok_timeout_s=2),
    )
    return DeviceRunner(cfg, Registry(), events.append, POLICY)


async def test_unplug_mid_job_interrupts_at_the_last_acked_line_and_reconnects(
    step_for, commands_of, job_executed, tmp_path: Path, until
) -> None:
    path = tmp_path / "job.gcode"
    write_moves(path, 4000, length_mm=2, feed=1200)  # ~7 simulated minutes
    other_path = tmp_path / "other.gcode"
    write_moves(other_path, 300, length_mm=2, feed=1200)
    events: list[Event] = []
    opts = MarlinSimOptions(time_factor=100, baud=250000, latency_ms=1)
    async with MarlinSim(opts) as sim_a, MarlinSim(opts) as sim_b, asyncio.TaskGroup() as tg:
        a = _runner("printer-a", sim_a.endpoint, events)
        b = _runner("printer-b", sim_b.endpoint, events)
        runs = [tg.create_task(a.run()), tg.create_task(b.run())]
        async with asyncio.timeout(10):
            await a.connected.wait()
            await b.connected.wait()
        b_connected_at = len(events)
        progress_a: list = []
        job_a = tg.create_task(a.run_step(step_for(path), progress_a.append))
        job_b = tg.create_task(b.run_step(step_for(other_path, index=1), lambda p: None))
        await until(lambda: progress_a and (progress_a[-1].lines_done or 0) > 200, 20, "job A runs")
        sim_a.host.unplug()
        async with asyncio.timeout(10):
            result = await job_a
        assert result.outcome == StepOutcome.INTERRUPTED
        assert result.last_line is not None and result.last_line > 200
        # Everything up to the last acknowledged line ran on the printer, in order.
        cmds = commands_of(path)
        acked = [c for line, c in cmds if line <= result.last_line]
        ran = job_executed(sim_a)
        assert ran[: len(acked)] == acked
        await until(lambda: a.state == DeviceState.UNAVAILABLE, 5, "A unavailable")
        sim_a.host.replug()
        await until(lambda: a.connects >= 2 and a.state == DeviceState.IDLE, 10, "A is back")
        async with asyncio.timeout(20):
            result_b = await job_b
        assert result_b.outcome == StepOutcome.DONE
        b_changes = [
            e.state
            for e in events[b_connected_at:]
            if isinstance(e, StateChanged) and e.device_id == "printer-b"
        ]
        assert DeviceState.UNAVAILABLE not in b_changes  # B never noticed
        assert b.connects == 1
        for r in runs:
            r.cancel()


async def test_wrong_machine_on_the_port_is_refused_naming_what_was_found() -> None:
    sim_opts = MarlinSimOptions(
        emulate_link=False, uuid="11111111-2222-3333-4444-555555555555", machine_type="Voron"
    )
    async with MarlinSim(sim_opts) as sim:
        ctx = DriverContext("printer", endpoint=sim.endpoint)
        opts = MarlinOptions(expected_uuid="cede2a2f-41a2-4748-9b12-c55c62f367ff")
        driver = MarlinDriver(ctx, opts)
        with pytest.raises(WrongDevice) as info:
            async with asyncio.timeout(10):
                await driver.__aenter__()
        text = str(info.value)
        assert "11111111-2222-3333-4444-555555555555" in text and "Voron" in text
        assert "cede2a2f" in text and sim.endpoint in text
        assert driver.link is not None and driver.link.closed  # the port was let go
        named = MarlinDriver(ctx, MarlinOptions(expected_name="Prusa"))
        with pytest.raises(WrongDevice, match="Voron"):
            async with asyncio.timeout(10):
                await named.__aenter__()


async def test_m112_overtakes_a_full_window(marlin, step_for, tmp_path: Path, until) -> None:
    """M112 is written ahead of everything queued; the emulated wire (115200 baud,
    16 ms latency) carries it behind at most the line being written."""
    path = tmp_path / "long.gcode"
    write_moves(path, 2000, length_mm=10, feed=600)
    delays = []
    for attempt in range(3):
        opts = MarlinSimOptions(time_factor=20, buffer_size=8, advanced_ok=True)
        async with marlin(opts) as (sim, driver), asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(step_for(path, index=attempt), lambda p: None))
            await until(lambda: driver.window_full, 10, "window full")
            t0 = time.monotonic()
            await driver.emergency_stop()
            await until(lambda: sim.counters.m112_received_at, 5, "M112 arrives")
            delays.append(sim.counters.m112_received_at[0] - t0)
            assert sim.killed and driver.status().state == DeviceState.ABORTED
            result = await task
            assert result.outcome == StepOutcome.FAILED and "M112" in result.message
    median = statistics.median(delays)
    print(f"\nM112 write → simulator: {[f'{d * 1000:.1f} ms' for d in delays]}")
    assert median < 0.05  # the target; a loaded machine still leaves a wide margin


async def test_firmware_reset_mid_job_interrupts_and_serve_reports_it(
    step_for, tmp_path: Path, until
) -> None:
    path = tmp_path / "long.gcode"
    write_moves(path, 2000, length_mm=10, feed=600)
    async with MarlinSim(MarlinSimOptions(emulate_link=False, time_factor=50)) as sim:
        driver = MarlinDriver(DriverContext("p", endpoint=sim.endpoint), MarlinOptions())
        errors: list[Exception] = []

        async def serve() -> None:
            try:
                await driver.serve()
            except Exception as exc:
                errors.append(exc)

        async with driver, asyncio.TaskGroup() as tg:
            tg.create_task(serve())
            task = tg.create_task(driver.run(step_for(path), lambda p: None))
            await until(lambda: len(sim.executed) > 30)
            sim.reset()
            async with asyncio.timeout(10):
                result = await task
        assert result.outcome == StepOutcome.INTERRUPTED and result.last_line
        assert errors and "restarted" in str(errors[0])
