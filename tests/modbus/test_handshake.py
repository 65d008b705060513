"""The recipe handshake on the simulated PLC: normal cycle, PLC error code, timeouts, and
reconnects in the middle that never issue a request twice (counted at the server)."""

from __future__ import annotations

import asyncio

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.sim import PlcSim

from cellctl.driver import DriverContext
from cellctl.errors import LinkError, StepFailed
from cellctl.model import Progress, StepOutcome

from .conftest import BOUND, plc_options, recipe_step, running


async def test_normal_cycle_writes_parameters_and_completes(sim: PlcSim) -> None:
    seen: list[Progress] = []
    async with running(sim, plc_options()) as driver:
        step = recipe_step(speed=150.5, force=320.0, name="bracket-b", cycle_time_s=3.0)
        async with asyncio.timeout(BOUND):
            result = await driver.run(step, seen.append)
    assert result.outcome == StepOutcome.DONE, result.message
    assert sim.request_sets == 1 and sim.request_edges == 1
    assert sim.get("conveyor_speed") == 150.5
    assert sim.get("clamp_force") == 320.0
    assert sim.get("recipe_name") == "bracket-b"
    assert sim.get("recipe_number") == 7
    assert sim.get("cycle_time_ds") == 30
    assert sim.get("cycle_token") != 0
    assert sim.get("parts_good") == 1
    assert not sim.get("cycle_request") and not sim.get("cycle_ack") and sim.get("cycle_done")
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


async def test_plc_error_code_fails_the_step(sim: PlcSim) -> None:
    sim.error_code = 42
    async with running(sim, plc_options()) as driver:
        async with asyncio.timeout(BOUND):
            result = await driver.run(recipe_step(), lambda p: None)
    assert result.outcome == StepOutcome.FAILED
    assert "error code 42" in result.message
    assert sim.request_sets == 1 and sim.get("parts_bad") == 1


async def test_no_acknowledge_times_out_and_clears_the_request(sim: PlcSim) -> None:
    sim.no_ack = True
    options = plc_options(recipe={**plc_options().recipe.model_dump(), "ack_timeout_s": 0.3})  # type: ignore[union-attr]
    async with running(sim, options) as driver:
        async with asyncio.timeout(BOUND):
            result = await driver.run(recipe_step(), lambda p: None)
    assert result.outcome == StepOutcome.FAILED
    assert "no acknowledge" in result.message and "request cleared" in result.message
    assert not sim.get("cycle_request")
    assert sim.request_sets == 1


async def test_no_done_times_out(sim: PlcSim) -> None:
    options = plc_options(recipe={**plc_options().recipe.model_dump(), "done_timeout_s": 0.3})  # type: ignore[union-attr]
    async with running(sim, options) as driver:
        async with asyncio.timeout(BOUND):
            result = await driver.run(recipe_step(cycle_time_s=600.0), lambda p: None)
    assert result.outcome == StepOutcome.FAILED
    assert "no done" in result.message


async def test_answer_to_the_request_lost_is_not_resent(sim: PlcSim) -> None:
    """The PLC takes the request write but the connection drops before it answers:
    the driver reconnects, reads the handshake, sees its request and goes on."""
    sim.drop_on_request = True
    async with running(sim, plc_options()) as driver:
        async with asyncio.timeout(BOUND):
            result = await driver.run(recipe_step(cycle_time_s=2.0), lambda p: None)
    assert result.outcome == StepOutcome.DONE, result.message
    assert sim.connections_dropped >= 1 and driver.link.reconnects >= 1
    assert sim.request_sets == 1, "the server saw exactly one write setting the request"
    assert sim.request_edges == 1 and sim.get("cycles_total") == 1


async def test_dropped_connection_mid_cycle_resumes_without_a_second_request(sim: PlcSim) -> None:
    async with running(sim, plc_options()) as driver, asyncio.TaskGroup() as tg:
        task = tg.create_task(driver.run(recipe_step(cycle_time_s=5.0), lambda p: None))
        async with asyncio.timeout(BOUND):
            await sim.wait_until(lambda s: s.get("cycle_busy"))
        assert sim.drop_connections() >= 1
        async with asyncio.timeout(BOUND):
            result = await task
    assert result.outcome == StepOutcome.DONE, result.message
    assert driver.link.reconnects >= 1
    assert sim.request_sets == 1 and sim.request_edges == 1
    assert sim.get("cycles_total") == 1


async def test_a_new_connection_attaches_to_the_cycle_in_flight(sim: PlcSim) -> None:
    """The daemon lost the PLC mid-cycle (server down longer than one reconnect); the
    supervisor's next driver runs the same step again: it reads the handshake first,
    recognises its token and waits for the cycle already running."""
    step = recipe_step("job-reconnect", cycle_time_s=15.0)
    first = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), plc_options())

    async def interrupted() -> None:
        with pytest.raises(LinkError):
            await first.run(step, lambda p: None)

    async with first, asyncio.timeout(BOUND), asyncio.TaskGroup() as tg:
        tg.create_task(interrupted())
        await sim.wait_until(lambda s: s.get("cycle_busy") and not s.get("cycle_ack"))
        await sim.restart(down_s=0.3)
    assert sim.get("cycle_busy"), "the PLC kept running its cycle"
    async with running(sim, plc_options()) as second:
        async with asyncio.timeout(BOUND):
            result = await second.run(step, lambda p: None)
    assert result.outcome == StepOutcome.DONE, result.message
    assert second.issued == [], "the second driver sent no request"
    assert sim.request_sets == 1 and sim.request_edges == 1


async def test_a_finished_cycle_is_reported_not_repeated(sim: PlcSim) -> None:
    step = recipe_step("job-done", cycle_time_s=1.0)
    async with running(sim, plc_options()) as driver:
        async with asyncio.timeout(BOUND):
            assert (await driver.run(step, lambda p: None)).outcome == StepOutcome.DONE
    async with running(sim, plc_options()) as again:
        async with asyncio.timeout(BOUND):
            result = await again.run(step, lambda p: None)
    assert result.outcome == StepOutcome.DONE
    assert sim.request_sets == 1


async def test_a_cycle_of_another_step_is_not_disturbed(sim: PlcSim) -> None:
    async with running(sim, plc_options()) as driver, asyncio.TaskGroup() as tg:
        task = tg.create_task(driver.run(recipe_step("job-a", cycle_time_s=3.0), lambda p: None))
        async with asyncio.timeout(BOUND):
            await sim.wait_until(lambda s: s.get("cycle_busy"))
        other = ModbusDriver(driver.ctx, plc_options())
        async with other:
            with pytest.raises(StepFailed, match="busy with another cycle"):
                await other.run(recipe_step("job-b"), lambda p: None)
        async with asyncio.timeout(BOUND):
            assert (await task).outcome == StepOutcome.DONE
    assert sim.request_sets == 1


async def test_bad_parameters_write_nothing(sim: PlcSim) -> None:
    async with running(sim, plc_options()) as driver:
        before = sim.get("conveyor_speed")
        with pytest.raises(StepFailed, match=r"'colour' is not in recipe.parameters"):
            await driver.run(recipe_step(speed=99.0, colour="red"), lambda p: None)
        with pytest.raises(StepFailed, match=r"'recipe_name'.*longer than the 16"):
            await driver.run(recipe_step(name="x" * 17), lambda p: None)
    assert sim.get("conveyor_speed") == before
    assert sim.request_sets == 0


async def test_a_faulted_plc_gets_no_request(sim: PlcSim) -> None:
    async with running(sim, plc_options()) as driver:
        await driver.emergency_stop()
        result = await driver.run(recipe_step(), lambda p: None)
        assert result.outcome == StepOutcome.FAILED and "request not sent" in result.message
        await driver.reset()
        async with asyncio.timeout(BOUND):
            assert (
                await driver.run(recipe_step("after-reset"), lambda p: None)
            ).outcome == StepOutcome.DONE
    assert sim.request_sets == 1
