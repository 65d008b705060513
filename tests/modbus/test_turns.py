"""Requests take turns on the link; an emergency stop goes before the queued polls."""

from __future__ import annotations

import asyncio

from cellctl_drivers.modbus.options import ModbusOptions
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from cellctl_drivers.modbus.turns import Turns

from .conftest import BOUND, plc_map, running


async def _queue(turns: Turns, order: list[str], name: str, urgent: bool = False) -> None:
    if not turns.take():
        await turns.wait(urgent)
    order.append(name)
    await asyncio.sleep(0)
    turns.done()


async def test_first_come_first_served_but_urgent_goes_first() -> None:
    turns = Turns()
    order: list[str] = []
    assert turns.take()  # a request on the wire
    async with asyncio.TaskGroup() as tg:
        for name in ("poll1", "poll2", "poll3"):
            tg.create_task(_queue(turns, order, name))
        await asyncio.sleep(0)
        tg.create_task(_queue(turns, order, "estop", urgent=True))
        await asyncio.sleep(0)
        turns.done()
    assert order == ["estop", "poll1", "poll2", "poll3"]
    assert turns.take()  # free again


async def test_a_cancelled_waiter_neither_blocks_nor_loses_the_turn() -> None:
    turns = Turns()
    order: list[str] = []
    assert turns.take()
    async with asyncio.TaskGroup() as tg:
        gone = tg.create_task(_queue(turns, order, "gone"))
        tg.create_task(_queue(turns, order, "next"))
        await asyncio.sleep(0)
        gone.cancel()  # cancelled while waiting
        await asyncio.sleep(0)
        turns.done()
    assert order == ["next"]
    # Cancelled just after being handed the turn: it passes the turn on.
    assert turns.take()
    async with asyncio.TaskGroup() as tg:
        handed = tg.create_task(_queue(turns, order, "handed"))
        tg.create_task(_queue(turns, order, "after"))
        await asyncio.sleep(0)
        turns.done()  # hands the turn to `handed`...
        handed.cancel()  # ...which is cancelled before it runs
    assert order == ["next", "after"]
    assert turns.take()


def _busy_map() -> ModbusOptions:
    """Four polling groups asking as fast as they can, and the heartbeat."""
    raw = plc_map()
    raw["groups"] = {g: {"interval_s": 0.001} for g in ("fast", "a", "b", "c")}
    for i, name in enumerate(("plc_state", "parts_good", "temperature")):
        raw["tags"][name]["group"] = "abc"[i]
    raw["heartbeat"]["interval_s"] = 0.01
    return ModbusOptions.model_validate(raw)


async def test_an_emergency_stop_waits_only_for_the_request_on_the_wire() -> None:
    async with PlcSim(PlcSimOptions(time_factor=10.0)) as sim:
        sim.slow_s = 0.02  # every request takes 20 ms, so the polls queue up
        async with running(sim, _busy_map()) as driver, asyncio.timeout(BOUND):
            await sim.wait_until(lambda s: s.request_total > 20)
            seen = len(sim.request_log)
            await driver.emergency_stop()
            log = list(sim.request_log)
        estop = driver.options.tags["estop"].address
        writes = [i for i, (fc, address, _) in enumerate(log) if i >= seen and fc == 5]
        assert [log[i][1] for i in writes] == [estop], log[seen:]
        at = writes[0]
        # At most the one request already sent when the e-stop was asked for; the four
        # polls and the heartbeat waiting for the link come after it.
        assert at - seen <= 1, log[seen : at + 1]
