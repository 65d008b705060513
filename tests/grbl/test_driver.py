"""The GRBL driver against its simulator on a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from cellctl_drivers.grbl.driver import SYNC_LINE, GrblDriver, GrblOptions
from cellctl_drivers.grbl.sim import GrblSim
from cellctl_drivers.serial import Received, SerialFirmware, SerialLink, SerialSimOptions

from cellctl.driver import DriverContext, SupportsPreflight
from cellctl.errors import LinkError, StepFailed, WrongDevice
from cellctl.model import (
    Alarm,
    DeviceState,
    OperatorRequest,
    Program,
    ProgramKind,
    RequestKind,
    Samples,
    Step,
    StepOutcome,
)

from .conftest import PROGRAM_DIR, connected, fast_sim, gcode_step, wait_for


def program_lines(executed: list[str]) -> list[str]:
    return [line for line in executed if line != SYNC_LINE]


async def test_connect_reads_build_info_settings_and_declares_buffer_metrics() -> None:
    sim = fast_sim(build_info="Mill-7", status_mask=3, line_numbers=True)
    async with connected(sim, expected_build_info="Mill-7", expected_version="1.1") as (
        driver,
        _,
        events,
    ):
        # GRBL stores `$I=Mill-7` as MILL-7; the check compares after that normalisation.
        assert driver.build.info == "MILL-7" and driver.build.rx_buffer == 128
        assert driver.settings[10] == "3"
        names = {m.name for m in driver.metrics()}
        assert {"planner_free", "rx_free", "line", "wpos_z", "feed_override"} <= names
        await wait_for(
            lambda: any(
                isinstance(e, Samples) and any(s.name == "rx_free" for s in e.samples)
                for e in events
            ),
            "Bf: values are published",
        )
        assert driver.status().state == DeviceState.IDLE


async def test_wrong_machine_is_refused() -> None:
    async with GrblSim(fast_sim(build_info="Lathe")) as sim:
        ctx = DriverContext(device_id="cnc", endpoint=sim.endpoint)
        driver = GrblDriver(ctx, GrblOptions(expected_build_info="Mill-7"))
        with pytest.raises(WrongDevice, match="Mill-7"):
            async with asyncio.timeout(10):
                await driver.__aenter__()
        await driver.__aexit__(None, None, None)


async def test_machine_name_is_compared_as_grbl_stores_it() -> None:
    # Someone typed `$I=mill-1` at the controller; the config says it the same way.
    async with connected(fast_sim(build_info="mill-1"), expected_build_info="mill-1") as (
        driver,
        sim,
        _,
    ):
        assert sim.firmware.build_info == "MILL-1" and driver.build.info == "MILL-1"
    async with GrblSim(fast_sim(build_info="mill-2")) as sim:
        ctx = DriverContext(device_id="cnc", endpoint=sim.endpoint)
        driver = GrblDriver(ctx, GrblOptions(expected_build_info="mill-1"))
        with pytest.raises(WrongDevice, match=r"stored by GRBL as 'MILL-1'.*found 'MILL-2'"):
            async with asyncio.timeout(10):
                await driver.__aenter__()
        await driver.__aexit__(None, None, None)


async def test_alarm_at_start_is_stopped_with_its_meaning_until_reset() -> None:
    sim = fast_sim(homing=True, start_alarm=1)
    async with connected(sim, soft_reset_on_connect=True) as (driver, _, events):
        status = driver.status()
        assert status.state == DeviceState.STOPPED
        # The driver names the alarm when it saw GRBL report it (at power-up, before we
        # opened the port, it may not have); else what the lock needs.
        assert status.detail.startswith("in alarm at connect: ")
        assert "ALARM:1 (hard limit" in status.detail or "homing required" in status.detail
        assert any(isinstance(e, Alarm) and e.active for e in events)
        result = await driver.run(gcode_step(["G0X1"], "locked"), lambda p: None)
        assert result.outcome == StepOutcome.FAILED and "alarm" in result.message
        async with asyncio.timeout(10):
            await driver.reset()  # homing is enabled and ALARM:1 lost position: $H
        assert driver.status().state == DeviceState.IDLE


async def test_soft_reset_on_connect_sees_the_banner() -> None:
    async with connected(fast_sim(), soft_reset_on_connect=True) as (driver, sim, _):
        assert driver._banners >= 1
        assert sim.firmware.state.value == "Idle"


async def test_line_over_the_limit_is_refused_before_the_job_starts() -> None:
    long = "G1X1Y2F100" + "0" * 70  # 80 significant characters: GRBL says error:11
    step = gcode_step(["G21", "G0X1", long, "G0X2"], "too-long")
    async with connected(fast_sim()) as (driver, sim, _):
        result = await driver.run(step, lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "too-long.nc:3:" in result.message and "error:11" in result.message
        assert sim.executed == [], "nothing was sent"


async def test_error_fails_the_step_naming_line_code_and_meaning() -> None:
    lines = ["G21G90", "G1X1F600", "G1X2", "G5X3", *[f"G1X{i % 5}" for i in range(40)]]
    async with connected(fast_sim(time_factor=5.0)) as (driver, sim, _):
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "bad-gcode"), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "line 4 'G5X3'" in result.message
        assert "error:20" in result.message and "unsupported" in result.message
        assert result.last_line is not None and result.last_line >= 5
        # The lines already buffered behind the bad one were flushed, not cut.
        assert len(program_lines(sim.executed)) < len(lines) - 1
        await wait_for(lambda: driver.status().state == DeviceState.IDLE, "idle again")
        assert sim.firmware.alarms == [], "held before the reset: position kept"


async def test_alarm_aborts_the_step_with_its_meaning() -> None:
    # The probe never touches (the setter is at Z-30): GRBL raises ALARM:5.
    lines = ["G21G90", "G0Z-1", "G38.2Z-10F600", "G0Z0", "G0X5"]
    async with connected(fast_sim()) as (driver, sim, events):
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "probe-fail"), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "ALARM:5" in result.message and "probe" in result.message
        assert driver.status().state == DeviceState.ABORTED
        assert any(isinstance(e, Alarm) and e.code == "ALARM:5" for e in events)
        assert "G0X5" not in sim.executed
        async with asyncio.timeout(10):
            await driver.reset()
        assert driver.status().state == DeviceState.IDLE


async def test_tool_change_mid_program_holds_until_acknowledged() -> None:
    first = ["G21G90", "T1", "G1X5F3000", "G1Y5"]
    second = ["G1X0", "G1Y0", "G0Z5"]
    lines = [*first, "M6 T2", *second]
    async with connected(fast_sim()) as (driver, sim, events):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(gcode_step(lines, "tool"), lambda p: None))
            await wait_for(
                lambda: driver.status().state == DeviceState.HELD, "held for the tool change"
            )
            # Held only after the motion before M6 finished.
            assert program_lines(sim.executed) == [line.replace(" ", "") for line in first]
            assert sim.firmware.mpos == (5.0, 5.0, 0.0) and sim.firmware.planner_used == 0
            assert "T2" in driver.status().detail
            requests = [e for e in events if isinstance(e, OperatorRequest)]
            assert len(requests) == 1 and requests[0].kind == RequestKind.CHANGE_TOOL
            assert requests[0].details["tool"] == 2 and requests[0].step_key == "job/0"
            await asyncio.sleep(0.2)
            assert driver.status().state == DeviceState.HELD, "waits for the operator"
            await driver.resume()  # the operator acknowledges
            async with asyncio.timeout(10):
                result = await task
        assert result.outcome == StepOutcome.DONE, result.message
        assert program_lines(sim.executed) == [*first, *second], "every line once; no M6"
        assert driver.status().setup["tool"] == "T2"
        assert not any(code == 20 for _, code in sim.firmware.errors)


async def test_automatic_tool_change_and_probe_macro() -> None:
    lines = ["G21G90", "G0X1", "T3M6", "G0X2"]
    macro = ("G53G0Z0", "G4P0.1")
    probe = ("G38.2Z-50F3000", "G10L20P1Z0", "G0Z0")
    async with connected(fast_sim(), tool_change_macro=macro, tool_probe_macro=probe) as (
        driver,
        sim,
        events,
    ):
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "auto-tool"), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        executed = program_lines(sim.executed)
        assert executed == ["G21G90", "G0X1", "G53G0Z0", "G4P0.1", *probe, "G0X2"]
        assert not any(isinstance(e, OperatorRequest) for e in events)
        assert sim.firmware.wcs[54][2] == -30.0, "tool length set from the probe"
        assert sim.counters.eeprom_violations == 0, "G10 L20 went alone (send-response)"


async def test_eeprom_writes_go_one_at_a_time() -> None:
    lines = ["G21", "$110=4000", "G10L2P1X1", "G0X3", "G28.1", "$I=Mill-7", "G0X4"]
    async with connected(fast_sim()) as (driver, sim, _):
        async with asyncio.timeout(10):
            result = await driver.run(gcode_step(lines, "eeprom"), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert sim.counters.eeprom_violations == 0
        # Stored as GRBL keeps them: a float setting with 3 decimals, the name upper-cased.
        assert sim.firmware.settings[110] == "4000.000" and sim.firmware.build_info == "MILL-7"


async def test_preflight_catches_a_bad_line_before_cutting() -> None:
    lines = ["G21G90", "G1X1F600", "M6T2", "G1X2Y", "G0X0"]
    step = gcode_step(lines, "preflight")
    async with connected(fast_sim(), preflight=True) as (driver, sim, _):
        assert isinstance(driver, SupportsPreflight)
        with pytest.raises(StepFailed, match=r"line 4 'G1X2Y'.*error:2"):
            async with asyncio.timeout(10):
                await driver.preflight(step)
        assert sim.executed == [] and "G1X1F600" in sim.firmware.checked
        result = await driver.run(step, lambda p: None)
        assert result.outcome == StepOutcome.FAILED and "line 4" in result.message
        assert sim.executed == [], "a refused program never moves the machine"
        good = gcode_step(["G21G90", "G1X1F600", "G0X0"], "preflight-ok")
        async with asyncio.timeout(10):
            result = await driver.run(good, lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert program_lines(sim.executed) == ["G21G90", "G1X1F600", "G0X0"]


async def test_line_noise_shows_as_an_error_not_hidden() -> None:
    lines = ["G21G90", "F6000", *[f"G1X{i % 9}Y{i % 7}" for i in range(300)]]
    async with connected(fast_sim(time_factor=50.0, corrupt_p=0.05, seed=3)) as (
        driver,
        sim,
        _,
    ):
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "noisy"), lambda p: None)
        hit = sim.faults.counters.lines_corrupted
        assert hit > 0
        if sim.firmware.errors:
            assert result.outcome == StepOutcome.FAILED and "error:" in result.message
        else:  # every hit landed on a digit: GRBL had no way to tell
            assert result.outcome == StepOutcome.DONE


async def test_link_loss_mid_job_is_interrupted_with_the_last_line() -> None:
    lines = ["G21G90", "F600", *[f"G1X{i % 2 * 10}" for i in range(60)]]
    async with GrblSim(fast_sim(time_factor=10.0)) as sim:
        ctx = DriverContext(device_id="cnc", endpoint=sim.endpoint)
        driver = GrblDriver(ctx, GrblOptions())
        await driver.__aenter__()
        lost: list[BaseException] = []

        async def serve() -> None:
            try:
                await driver.serve()
            except LinkError as exc:
                lost.append(exc)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(serve())
                job = tg.create_task(driver.run(gcode_step(lines, "unplug"), lambda p: None))
                await wait_for(lambda: (driver.last_acked_line or 0) >= 5, "streaming")
                sim.host.unplug()
                async with asyncio.timeout(10):
                    result = await job
        finally:
            await driver.__aexit__(None, None, None)
    assert lost, "serve() ended with LinkError"
    assert result.outcome == StepOutcome.INTERRUPTED
    assert result.last_line is not None and result.last_line >= 5


def test_cellctl_sim_grbl_prints_the_device_path() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "sim", "grbl", "--time-factor", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.endswith("/grbl") and path.startswith("/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class NotGrbl(SerialFirmware):
    """Another firmware on the port: answers everything as Marlin does."""

    name = "marlinish"

    async def execute(self, item: Received) -> None:
        self.reply("echo:Unknown command: " + item.data.decode(errors="replace").strip())
        self.reply("ok")


async def test_another_firmware_on_the_port_is_refused() -> None:
    async with NotGrbl(SerialSimOptions(emulate_link=False)) as sim:
        driver = GrblDriver(DriverContext(device_id="cnc", endpoint=sim.endpoint), GrblOptions())
        with pytest.raises(WrongDevice, match="not a GRBL"):
            async with asyncio.timeout(10):
                await driver.__aenter__()
        await driver.__aexit__(None, None, None)


async def test_connecting_while_a_job_still_runs_waits_for_idle_without_reset() -> None:
    async with GrblSim(fast_sim(time_factor=20.0)) as sim:
        link = await SerialLink.open(sim.endpoint)
        link.write_nowait(b"G1X20F600\n")  # 2 s of motion, 0.1 s at this time factor
        await wait_for(lambda: sim.firmware.state.value == "Run", "moving")
        await link.close()
        driver = GrblDriver(DriverContext(device_id="cnc", endpoint=sim.endpoint), GrblOptions())
        async with asyncio.timeout(10):
            await driver.__aenter__()
        try:
            assert sim.firmware.alarms == [], "no reset: the running move was not killed"
            assert sim.firmware.mpos == (20.0, 0.0, 0.0)
            assert driver.status().state == DeviceState.IDLE
        finally:
            await driver.__aexit__(None, None, None)


async def test_a_lost_ok_fails_the_step_instead_of_hanging() -> None:
    lines = ["G21G90", "F6000", *[f"G1X{i % 9}Y{i % 7}" for i in range(40)]]
    async with connected(fast_sim(time_factor=50.0), answer_timeout_s=0.5) as (driver, sim, _):
        sim.faults.drop_next_reply()  # the first `ok` of the job never arrives
        async with asyncio.timeout(15):
            result = await driver.run(gcode_step(lines, "lost-ok"), lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert "lost answer" in result.message
        assert sim.faults.counters.replies_dropped == 1


async def test_stop_during_a_tool_change_cancels_and_keeps_position() -> None:
    lines = ["G21G90", "G1X5F3000", "M6T4", "G1X0"]
    async with connected(fast_sim()) as (driver, sim, _):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(gcode_step(lines, "tool-stop"), lambda p: None))
            await wait_for(lambda: driver.status().state == DeviceState.HELD, "held for T4")
            async with asyncio.timeout(10):
                await driver.stop()
                result = await task
        assert result.outcome == StepOutcome.CANCELLED
        assert "G1X0" not in sim.executed and sim.firmware.alarms == []
        await wait_for(lambda: driver.status().state == DeviceState.IDLE, "idle after stop")


async def test_safety_door_suspends_and_resume_continues() -> None:
    lines = ["G21G90", "F600", *[f"G1X{i % 2 * 10}" for i in range(6)]]
    async with connected(fast_sim(time_factor=20.0)) as (driver, sim, _):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(driver.run(gcode_step(lines, "door"), lambda p: None))
            await wait_for(lambda: driver.status().state == DeviceState.EXECUTE, "executing")
            sim.on_realtime(0x84)  # the door switch opens
            await wait_for(lambda: driver.status().state == DeviceState.SUSPENDED, "suspended")
            await driver.resume()
            async with asyncio.timeout(20):
                result = await task
        assert result.outcome == StepOutcome.DONE, result.message
        assert program_lines(sim.executed) == lines


async def test_unreadable_programs_fail_with_a_clear_message() -> None:
    missing = Step("job", 0, "mill", Program(ProgramKind.GCODE, path=PROGRAM_DIR / "missing.nc"))
    binary = gcode_step(["G0X1"], "binary")
    assert binary.program.path is not None
    binary.program.path.write_bytes(b"G0X1\n\xff\xfe\n")
    robot = Step("job", 0, "mill", Program(ProgramKind.ROBOT_PROGRAM, name="unload"))
    async with connected(fast_sim()) as (driver, sim, _):
        for step, text in (
            (missing, "cannot read"),
            (binary, "not ASCII G-code outside a comment (byte 0xFF)"),
            (robot, "G-code"),
        ):
            result = await driver.run(step, lambda p: None)
            assert result.outcome == StepOutcome.FAILED and text in result.message
        assert sim.executed == []
        assert driver.status().state == DeviceState.IDLE


async def test_latin1_comments_run_and_non_ascii_code_is_refused() -> None:
    """A CAM post-processor writes comments in its operator's language (Latin-1 or
    UTF-8): they never reach GRBL, so they must not stop the job. A byte above 0x7F in
    the code itself would, since GRBL's serial interrupt acts on such bytes."""
    commented = gcode_step(["G0X1"], "commented")
    assert commented.program.path is not None
    commented.program.path.write_bytes(b"(Fr\xe4sen: Tasche \xbd)\nG0X1 ; \xc3\xbcber\nG0X2\n")
    code = gcode_step(["G0X1"], "code")
    assert code.program.path is not None
    code.program.path.write_bytes(b"G0X1\nG0X\x852\n")
    async with connected(fast_sim()) as (driver, sim, _):
        result = await driver.run(commented, lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert program_lines(sim.executed) == ["G0X1", "G0X2"]
        before = list(sim.executed)
        result = await driver.run(code, lambda p: None)
        assert result.outcome == StepOutcome.FAILED
        assert ":2: not ASCII G-code outside a comment (byte 0x85)" in result.message
        assert sim.executed == before  # refused before anything was sent


async def test_grblhal_buffer_size_comes_from_the_controller() -> None:
    lines = ["G21G90", "F60000", *[f"G1X{i % 10}Y{i % 3}" for i in range(300)]]
    async with connected(fast_sim(rx_buffer=1024)) as (driver, sim, _):
        assert driver.window.size == 1024
        async with asyncio.timeout(20):
            result = await driver.run(gcode_step(lines, "hal"), lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        assert sim.counters.overflows == 0 and driver.window.peak > 128
