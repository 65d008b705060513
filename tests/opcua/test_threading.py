"""The asyncua client lives on the driver's own thread: started on connect, gone
after exit; work crosses in both directions with bounds, cancellation and
cellctl errors only; data changes arrive in batches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.clientthread import ClientThread
from cellctl_drivers.opcua.sim import RobotSim
from cellctl_drivers.opcua.tagmap import Coalescer

from cellctl.errors import CellError, LinkError
from cellctl.model import Event, Quality, Sample, Samples

from .conftest import fresh, make_driver

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def sim(robot_sim: RobotSim) -> AsyncIterator[RobotSim]:
    yield await fresh(robot_sim, time_factor=4.0)


def _client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("opcua-")]


async def test_client_thread_runs_while_connected_and_is_gone_after_exit(sim: RobotSim) -> None:
    before = _client_threads()
    events: list[Event] = []
    driver = make_driver(sim.endpoint, events)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        thread = driver.client_thread.thread
        assert thread is not None and thread.is_alive()
        assert thread is not threading.current_thread()
        assert thread in _client_threads()
        await driver.write_tag("program_number", 2)  # a round trip through the thread
        serving.cancel()
    assert not thread.is_alive(), "joined on exit"
    assert _client_threads() == before, "no client thread left behind"
    await driver.__aexit__(None, None, None)  # idempotent, thread or not


async def test_failed_connect_leaves_no_thread() -> None:
    before = _client_threads()
    driver = make_driver("opc.tcp://127.0.0.1:1/nothing-listens", timeout_s=1.0)
    with pytest.raises(LinkError):
        async with asyncio.timeout(15):
            await driver.__aenter__()
    await driver.__aexit__(None, None, None)
    assert _client_threads() == before


async def test_data_changes_arrive_in_batches(sim: RobotSim) -> None:
    deliveries: list[int] = []

    def sink(event: Event) -> None:
        if isinstance(event, Samples):
            deliveries.append(len(event.samples))

    driver = make_driver(sim.endpoint)
    driver.ctx = type(driver.ctx)("robot", sink, sim.endpoint)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        # The first publish carries every subscribed tag's initial value at once.
        async with asyncio.timeout(10):
            while not any(n > 1 for n in deliveries[1:]):
                await asyncio.sleep(0.02)
        serving.cancel()


# --- the thread and the coalescer alone: no server needed ----------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def worker() -> AsyncIterator[ClientThread]:
    thread = ClientThread("opcua-test")
    await thread.start()
    yield thread
    await thread.stop()
    assert not thread.alive


async def test_work_runs_on_the_client_thread(worker: ClientThread) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert await worker.run(where, within=5) == "opcua-test"


async def test_cancelling_the_caller_cancels_the_client_side_work(worker: ClientThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(worker.run(long))
        async with asyncio.timeout(5):
            while not started.is_set():
                await asyncio.sleep(0.005)
        task.cancel()
    assert task.cancelled()
    async with asyncio.timeout(5):
        while not cancelled.is_set():
            await asyncio.sleep(0.005)


async def test_bound_and_foreign_errors_become_cellctl_errors(worker: ClientThread) -> None:
    async def slow() -> None:
        await asyncio.sleep(60)

    async def broken() -> None:
        raise ValueError("inside the library")

    t = time.monotonic()
    with pytest.raises(LinkError, match="no answer within"):
        await worker.run(slow, within=0.2)
    assert time.monotonic() - t < 5
    with pytest.raises(CellError, match="inside the library"):
        await worker.run(broken, within=5)


async def test_a_stopping_thread_fails_work_with_link_error_not_cancellation() -> None:
    thread = ClientThread("opcua-test-stop")
    await thread.start()

    async def long() -> None:
        await asyncio.sleep(60)

    failed: list[BaseException] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(thread.run(long))
            await asyncio.sleep(0.05)
            await thread.stop()
    except* LinkError as group:
        failed.extend(group.exceptions)
    assert len(failed) == 1, "the caller was not cancelled: its work failed"
    with pytest.raises(LinkError, match="not running"):
        await thread.run(long)
    assert not thread.alive


async def test_coalescer_wakes_the_loop_once_per_batch_with_the_latest_values() -> None:
    batches: list[list[Sample]] = []
    sink = Coalescer(asyncio.get_running_loop(), batches.append)

    def client_side() -> None:
        for i in range(1000):
            sink.put([Sample("a", float(i), 1000.0 + i), Sample("b", -float(i), 1000.0 + i)])

    t = threading.Thread(target=client_side)
    t.start()
    t.join(timeout=10)
    async with asyncio.timeout(5):
        while not batches or sink._scheduled:
            await asyncio.sleep(0.005)
    assert len(batches) < 1000, "batches, not one wake-up per put"
    last = {s.name: s for s in batches[-1]}
    assert last["a"].value == 999.0 and last["b"].value == -999.0
    # An older sample never replaces a newer one within a batch.
    sink.put([Sample("a", 5.0, 2000.0), Sample("a", 4.0, 1999.0, Quality.GOOD)])
    async with asyncio.timeout(5):
        while sink._scheduled:
            await asyncio.sleep(0.005)
    assert [s.value for s in batches[-1]] == [5.0]
    # Closed: a dead session's values are never delivered.
    sink.close()
    n = len(batches)
    sink.put([Sample("a", 6.0, 3000.0)])
    await asyncio.sleep(0.05)
    assert len(batches) == n
