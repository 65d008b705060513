"""Data types other controllers use: every write and method argument takes the node's or
argument's declared type, the heartbeat wraps at its node's type, and a value that does
not fit is a clear error that costs no session. Run against the simulator configured as
those controllers are (`retype`), on the area's shared server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from cellctl_drivers.opcua.boundary import TypeMismatch
from cellctl_drivers.opcua.datatypes import INT_RANGES
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.sim import RobotSim
from cellctl_drivers.opcua.simconfig import NS, sim_robot_table

from cellctl.errors import WrongDevice
from cellctl.model import Program, ProgramKind, Step, StepOutcome

from .conftest import fresh, make_driver

pytestmark = pytest.mark.asyncio(loop_scope="session")

INT_TYPES = ["SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64"]


@pytest_asyncio.fixture(loop_scope="session")
async def sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    sim = await fresh(robot_sim, time_factor=20.0)
    sim.heartbeats.clear()
    try:
        yield sim
    finally:
        await sim.retype(heartbeat_type="Int32", program_number_type="Int32", float_type="Double")


async def until(pred: Callable[[], bool], what: str, bound: float = 15.0) -> None:
    try:
        async with asyncio.timeout(bound):
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def typed_driver(sim: RobotSim, start: str = "handshake", **over: Any) -> OpcUaDriver:
    table = sim_robot_table(start)
    table["tags"]["speed_override"] = {
        "node": "s=Robot.SpeedOverride",
        "type": "float",
        "read": "none",
        "writable": True,
    }
    return make_driver(sim.endpoint, start=start, tags=table["tags"], **over)


async def run_program(driver: OpcUaDriver, program: str) -> Any:
    step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name=program))
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        async with asyncio.timeout(20):
            result = await driver.run(step, lambda p: None)
        serving.cancel()
    return result


@pytest.mark.parametrize("vtype", ["Boolean", *INT_TYPES])
async def test_heartbeat_wraps_at_the_node_type(sim: RobotSim, vtype: str) -> None:
    await sim.retype(heartbeat_type=vtype)
    driver = make_driver(
        sim.endpoint, heartbeat={"tag": "heartbeat", "interval_s": 0.04}, max_writes_per_s=500.0
    )
    top = INT_RANGES[ua.VariantType.__members__[vtype]][1] if vtype != "Boolean" else 1
    async with driver, asyncio.TaskGroup() as tg:
        # Start just below the top: a Byte counter wraps after 256 beats, an Int16 one
        # after 9 hours at 1 Hz; the wrap is what must not break the session.
        driver._heartbeat = top - 3 if vtype != "Boolean" else False
        serving = tg.create_task(driver.serve())

        def wrapped() -> bool:
            seen = list(sim.heartbeats)
            if vtype == "Boolean":
                return seen.count(True) >= 2 and seen.count(False) >= 2
            high = [i for i, v in enumerate(seen) if v >= top - 1]
            return bool(high) and any(v <= 2 for v in seen[high[0] :])

        await until(wrapped, f"the {vtype} heartbeat to wrap")
        serving.cancel()
    assert driver.reconnects == 0
    if vtype != "Boolean":
        assert all(0 <= v <= top for v in sim.heartbeats)


async def test_a_heartbeat_node_that_cannot_beat_is_refused_at_connect(sim: RobotSim) -> None:
    driver = make_driver(sim.endpoint, heartbeat={"tag": "state"})
    with pytest.raises(WrongDevice, match=r"heartbeat.tag: .* is a String"):
        async with driver:
            pass


@pytest.mark.parametrize("vtype", ["Int16", "UInt32", "Byte", "Int64"])
async def test_method_start_sends_the_declared_argument_type(sim: RobotSim, vtype: str) -> None:
    await sim.retype(program_number_type=vtype)
    driver = typed_driver(sim, "method")
    async with driver:
        result = await run_program(driver, "pick")
    assert result.outcome == StepOutcome.DONE, result.message
    assert [(s.program, s.via) for s in sim.robot.starts] == [(1, "method")]


@pytest.mark.parametrize("vtype", ["Byte", "UInt16", "SByte"])
async def test_handshake_writes_the_program_number_type(sim: RobotSim, vtype: str) -> None:
    await sim.retype(program_number_type=vtype)
    driver = typed_driver(sim, "handshake")
    async with driver:
        result = await run_program(driver, "place")
    assert result.outcome == StepOutcome.DONE, result.message
    assert [(s.program, s.via) for s in sim.robot.starts] == [(2, "handshake")]


@pytest.mark.parametrize(("start", "vtype"), [("method", "Int16"), ("handshake", "Byte")])
async def test_a_program_number_that_does_not_fit_fails_clearly(
    sim: RobotSim, start: str, vtype: str
) -> None:
    await sim.retype(program_number_type=vtype)
    driver = typed_driver(sim, start)
    async with driver:
        result = await run_program(driver, "70000")
        assert result.outcome == StepOutcome.FAILED
        assert f"70000 does not fit {vtype}" in result.message
        # Nothing was sent, the session is fine, and the next program starts.
        assert sim.robot.starts == [] and driver.reconnects == 0
        result = await run_program(driver, "pick")
    assert result.outcome == StepOutcome.DONE, result.message


async def test_wrong_argument_count_names_the_declared_types(sim: RobotSim) -> None:
    await sim.retype(program_number_type="Int16")
    driver = typed_driver(sim, "method")
    async with driver:
        with pytest.raises(TypeMismatch, match=r"takes 1 argument\(s\) \(Int16\), 2 given"):
            await driver.call("s=Robot", "s=Robot.StartProgram", [1, 2])
    assert sim.robot.starts == []


@pytest.mark.parametrize("vtype", ["Double", "Float"])
async def test_float_nodes_read_and_write_in_their_type(sim: RobotSim, vtype: str) -> None:
    await sim.retype(float_type=vtype)
    driver = typed_driver(sim, "method")
    async with driver:
        result = await run_program(driver, "pick")
        assert result.outcome == StepOutcome.DONE, result.message
        assert driver.value("progress") == 1.0 and isinstance(driver.value("j1"), float)
        await driver.write_tag("speed_override", 55.5)
        await until(lambda: sim._inputs.get("SpeedOverride") == 55.5, "the setpoint")
        if vtype == "Float":
            with pytest.raises(TypeMismatch, match="does not fit Float"):
                await driver.write_tag("speed_override", 1e39)
        with pytest.raises(TypeMismatch, match="is not a number"):
            await driver.write_tag("speed_override", "fast")
        await driver.write_tag("speed_override", 80)
        await until(lambda: sim._inputs.get("SpeedOverride") == 80.0, "the next setpoint")
    assert driver.reconnects == 0


async def test_the_simulator_refuses_other_types_as_other_stacks_do(sim: RobotSim) -> None:
    # What the driver used to send: an Int32 argument to an Int16 method, an Int32 write
    # to a Byte node.
    await sim.retype(program_number_type="Int16", heartbeat_type="Byte")
    async with Client(sim.endpoint, timeout=4) as client:
        idx = await client.get_namespace_index(NS)
        robot = client.get_node(f"ns={idx};s=Robot")
        method = client.get_node(f"ns={idx};s=Robot.StartProgram")
        with pytest.raises(UaStatusCodeError) as info:
            await robot.call_method(method, ua.Variant(1, ua.VariantType.Int32))
        assert info.value.code == StatusCodes.BadInvalidArgument
        beat = client.get_node(f"ns={idx};s=Robot.Heartbeat")
        with pytest.raises(UaStatusCodeError) as info:
            await beat.write_value(ua.Variant(256, ua.VariantType.Int32))
        assert info.value.code == StatusCodes.BadTypeMismatch
        assert await beat.read_data_type_as_variant_type() == ua.VariantType.Byte
    assert sim.robot.starts == []


async def test_subtypes_and_enumerations_resolve_to_their_builtin_type(sim: RobotSim) -> None:
    # Standard nodes of every server: ServerStatus.State is the ServerState enumeration
    # (an Int32 on the wire), StartTime a UtcTime (a DateTime subtype).
    ua_ns = "nsu=http://opcfoundation.org/UA/;"
    table = sim_robot_table("handshake")
    table["tags"]["server_state"] = {"node": ua_ns + "i=2259", "type": "int", "read": "poll"}
    table["tags"]["started"] = {"node": ua_ns + "i=2257", "type": "string", "read": "poll"}
    driver = make_driver(sim.endpoint, tags=table["tags"])
    async with driver:
        assert driver._link is not None
        vtypes = driver._link.session.vtypes
        assert vtypes["server_state"] == ua.VariantType.Int32
        assert vtypes["started"] == ua.VariantType.DateTime
        assert vtypes["progress"] == ua.VariantType.Double
