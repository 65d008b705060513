"""Supervisor: failing, hanging and crashing devices never disturb the others."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

import pytest
from structlog.testing import capture_logs
from support.fake import ATTEMPTS, FakeDriver, FakeOptions, FakeSim, FakeSimOptions

from cellctl.config import DeviceCommon, DeviceConfig, SupervisorSection
from cellctl.errors import LinkError
from cellctl.model import DeviceState, Event, Program, ProgramKind, StateChanged, Step
from cellctl.registry import Registry
from cellctl.supervisor import DeviceRunner, Supervisor, supervisor_backoff
from cellctl.tasks import TaskGroup

REG = Registry(extra_drivers={"fake": FakeDriver}, extra_sims={"fake": FakeSim})
POLICY = SupervisorSection(
    backoff_initial_s=1.0,
    backoff_max_s=30.0,
    backoff_multiplier=2.0,
    jitter=0.2,
    connect_timeout_s=0.3,
    stable_after_s=1000.0,
)


class FakeClock:
    """Virtual time: sleep() advances it at once, so backoff costs no wall time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0.001)


def device(dev_id: str, backend: str = "sim", **options: Any) -> DeviceConfig:
    ATTEMPTS.pop(dev_id, None)
    return DeviceConfig(
        id=dev_id,
        common=DeviceCommon(driver="fake", backend=backend),  # type: ignore[arg-type]
        options=FakeOptions(**options),
        sim=FakeSimOptions(label=dev_id),
    )


async def until(pred: Callable[[], bool], bound: float = 5.0) -> None:
    async with asyncio.timeout(bound):
        while not pred():
            await asyncio.sleep(0.005)


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    b = supervisor_backoff(POLICY, random.Random(1))
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        base = min(30.0, 1.0 * 2.0**i)
        assert base * 0.8 - 1e-9 <= d <= min(30.0, base * 1.2) + 1e-9
    assert delays[-1] <= 30.0 and delays[-1] >= 24.0
    b.reset()
    assert b.next() <= 1.2


def test_backoff_survives_days_of_failures() -> None:
    b = supervisor_backoff(POLICY, random.Random(3))
    for _ in range(5000):  # 2.0 ** 5000 would overflow a float
        delay = b.next()
    assert 24.0 <= delay <= 30.0


async def test_failing_device_backs_off_per_policy_while_others_run() -> None:
    events: list[Event] = []
    clock = FakeClock()
    bad = DeviceRunner(
        device("bad", fail_connects=6), REG, events.append, POLICY, clock, random.Random(7)
    )
    good = DeviceRunner(device("good"), REG, events.append, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(bad.run()), tg.create_task(good.run())]
        await until(lambda: bad.connects == 1)
        assert good.state == DeviceState.IDLE and good.connects == 1
        for t in tasks:
            t.cancel()
    # Six failures, six backoff waits, each within the policy's jitter band.
    assert bad.failures == 6
    assert len(bad.delays) == 6
    for i, d in enumerate(bad.delays):
        base = min(POLICY.backoff_max_s, POLICY.backoff_initial_s * 2**i)
        assert base * 0.8 - 1e-9 <= d <= base * 1.2 + 1e-9, (i, d)
    assert clock.slept == bad.delays


async def test_hanging_connect_times_out_and_does_not_block_others() -> None:
    events: list[Event] = []
    hang = DeviceRunner(device("hang", hang_connect=True), REG, events.append, POLICY, FakeClock())
    good = DeviceRunner(device("good2"), REG, events.append, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(hang.run()), tg.create_task(good.run())]
        await until(lambda: hang.failures >= 2)
        assert good.state == DeviceState.IDLE
        assert "connect timed out" in hang.last_error
        assert hang.state == DeviceState.UNAVAILABLE
        for t in tasks:
            t.cancel()


async def test_crash_mid_run_reconnects_and_others_never_notice() -> None:
    events: list[Event] = []
    crash = DeviceRunner(
        device("crash", crash_after_s=0.05), REG, events.append, POLICY, FakeClock()
    )
    good = DeviceRunner(device("good3"), REG, events.append, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(crash.run()), tg.create_task(good.run())]
        await until(lambda: crash.connects >= 3)
        good_changes = [e for e in events if isinstance(e, StateChanged) and e.device_id == "good3"]
        for t in tasks:
            t.cancel()
    assert "simulated driver crash" in crash.last_failure
    assert [e.state for e in good_changes] == [DeviceState.IDLE], "good device saw one connect"
    crash_states = [
        e.state for e in events if isinstance(e, StateChanged) and e.device_id == "crash"
    ]
    assert crash_states.count(DeviceState.UNAVAILABLE) >= 3


async def test_supervisor_reload_keeps_unchanged_and_waits_for_busy() -> None:
    events: list[Event] = []
    sup = Supervisor(
        {"a": device("a"), "b": device("b", step_s=0.3), "c": device("c")},
        REG,
        events.append,
        POLICY,
        FakeClock(),
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sup.run())
        await until(lambda: all(r.connects for r in sup.runners.values()) and len(sup.runners) == 3)
        a_before, b_before = sup.runners["a"], sup.runners["b"]
        step = Step("job1", 0, "print", Program(ProgramKind.NONE))
        busy = tg.create_task(b_before.run_step(step, lambda p: None))
        await until(lambda: b_before.busy)
        actions = await sup.reload(
            {
                "a": device("a"),  # unchanged
                "b": device("b", step_s=0.3, baudrate=9600),  # changed while busy
                "d": device("d"),  # added; c removed
            }
        )
        assert actions == {"c": "removed", "a": "unchanged", "b": "restart pending", "d": "added"}
        assert sup.runners["a"] is a_before
        assert sup.runners["b"] is b_before, "a busy device is not restarted mid-step"
        result = await busy
        assert result.outcome == "done"
        await until(lambda: sup.runners.get("b") not in (None, b_before))
        await until(lambda: sup.runners["b"].connects == 1 and sup.runners["d"].connects == 1)
        assert "c" not in sup.runners
        task.cancel()


async def test_wrong_sim_registry_is_survived() -> None:
    reg = Registry(extra_drivers={"fake": FakeDriver})  # no simulator registered
    runner = DeviceRunner(device("nosim"), reg, lambda e: None, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        t = tg.create_task(runner.run())
        await until(lambda: runner.failures >= 2)
        t.cancel()
    assert "simulator failed to start" in runner.last_error


@pytest.mark.parametrize("summary_devices", [0, 2])
async def test_summary_counts_states(summary_devices: int) -> None:
    devs = {f"s{i}": device(f"s{i}") for i in range(summary_devices)}
    sup = Supervisor(devs, REG, lambda e: None, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        t = tg.create_task(sup.run())
        await until(lambda: sup.started.is_set() and sup.all_tried())
        await until(lambda: all(r.state == DeviceState.IDLE for r in sup.runners.values()))
        expected = f"{summary_devices} devices: " + ("2 idle" if summary_devices else "none")
        assert sup.summary() == expected
        t.cancel()


# --- a driver that ends its task in every way a driver can (issue 14) -----------------


class DriverBug(BaseException):
    """Not an Exception: what a driver bug or a library may raise past `except Exception`."""


class RogueOptions(FakeOptions):
    # What the first `times` connections do; later ones behave.
    rogue: Literal["none", "serve-cancelled", "serve-base", "connect-cancelled", "leak-cancel"]
    times: int = 1


CLOSED: Counter[str] = Counter()


class RogueDriver(FakeDriver):
    options: RogueOptions

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        CLOSED[self.ctx.device_id] += 1
        await super().__aexit__(et, e, tb)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self._rogue("connect-cancelled"):
            raise asyncio.CancelledError()  # as the Modbus link did with a leaked request
        return self

    async def serve(self) -> None:
        await asyncio.sleep(0.01)
        if self._rogue("serve-cancelled"):
            raise asyncio.CancelledError()
        if self._rogue("serve-base"):
            raise DriverBug("a driver bug past `except Exception`")
        if self._rogue("leak-cancel"):
            # Cancel its own task, swallow it, never uncancel: a request left behind,
            # as a TaskGroup on 3.11/3.12 leaves one. Then lose the link cleanly.
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
            raise LinkError(f"link lost with cancelling() == {task.cancelling()}")
        await super().serve()

    def _rogue(self, what: str) -> bool:
        return self.options.rogue == what and ATTEMPTS[self.ctx.device_id] <= self.options.times


ROGUE_REG = Registry(extra_drivers={"rogue": RogueDriver}, extra_sims={"fake": FakeSim})


def rogue(dev_id: str, what: str, times: int = 1) -> DeviceConfig:
    ATTEMPTS.pop(dev_id, None)
    return DeviceConfig(
        id=dev_id,
        common=DeviceCommon(driver="rogue", backend="real"),
        options=RogueOptions(rogue=what, times=times),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("what", ["serve-cancelled", "serve-base", "connect-cancelled"])
async def test_a_driver_ending_its_task_is_logged_as_an_error_and_restarted(what: str) -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        runner = DeviceRunner(rogue(f"r-{what}", what, times=2), ROGUE_REG, noop, POLICY, clock)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            await until(lambda: runner.connected.is_set() and ATTEMPTS[runner.id] == 3)
            await asyncio.sleep(0.1)  # it stays connected
            assert runner.connected.is_set() and not task.done()
            assert runner.state == DeviceState.IDLE
            task.cancel()
    assert runner.faults == 2
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 2
    cause = "CancelledError" if "cancelled" in what else "DriverBug"
    for e in errors:
        assert e["event"] == "device task ended unexpectedly; restarting after backoff"
        assert cause in e["error"] and e["exc_info"] is not None
    # Restarted after a backoff each time, per the policy (1 s, then 2 s, ±20 %).
    assert len(clock.slept) == 2 and 0.8 <= clock.slept[0] <= 1.2 and 1.6 <= clock.slept[1] <= 2.4


async def test_a_cancel_request_a_driver_leaves_behind_ends_with_its_connection() -> None:
    runner = DeviceRunner(
        rogue("leaky", "leak-cancel", times=3), ROGUE_REG, noop, POLICY, FakeClock()
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runner.run())
        await until(lambda: runner.connects == 4 and runner.connected.is_set(), bound=30)
        task.cancel()
    # Each connection had its own task: the request left behind never reached the next one,
    # whose connect (under asyncio.timeout, which counts cancel requests) went through.
    assert "cancelling() == 1" in runner.last_failure
    assert runner.faults == 0 and runner.failures == 3


async def test_shutdown_is_no_fault_and_closes_the_connected_driver() -> None:
    with capture_logs() as logs:
        runner = DeviceRunner(rogue("calm", "none"), ROGUE_REG, noop, POLICY, FakeClock())
        task = asyncio.get_running_loop().create_task(runner.run())
        await until(runner.connected.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runner.faults == 0 and not runner.connected.is_set() and runner.driver is None
    assert runner.state == DeviceState.UNAVAILABLE
    assert not [e for e in logs if e["log_level"] == "error"]
    assert CLOSED["calm"] == 1, "the driver's __aexit__ ran"


class CrashingSim(FakeSim):
    starts = 0

    async def __aenter__(self) -> Self:
        CrashingSim.starts += 1
        if CrashingSim.starts == 1:
            raise DriverBug("simulator died at start")
        return await super().__aenter__()


async def test_a_simulator_raising_a_base_exception_is_restarted() -> None:
    reg = Registry(extra_drivers={"fake": FakeDriver}, extra_sims={"fake": CrashingSim})
    CrashingSim.starts = 0
    runner = DeviceRunner(device("simbug"), reg, noop, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runner.run())
        await until(runner.connected.is_set)
        task.cancel()
    assert CrashingSim.starts == 2 and runner.faults == 1
    assert "DriverBug: simulator died at start" in runner.last_failure


def noop(_: Event) -> None:
    return None


class SimWithDyingTask(FakeSim):
    """Runs a background task in a TaskGroup entered from the device's task, as the
    serial and OPC UA simulators do; in its first life that task crashes, and the
    group cancels the task that entered it."""

    lives = 0

    async def __aenter__(self) -> Self:
        SimWithDyingTask.lives += 1
        self._tg = TaskGroup()
        await self._tg.__aenter__()
        if SimWithDyingTask.lives == 1:
            self._tg.create_task(self._die())
        return await super().__aenter__()

    async def _die(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("simulator task crashed")

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            await self._tg.__aexit__(None, None, None)
        await super().__aexit__(et, e, tb)


async def test_a_simulator_task_cancelling_the_device_is_logged_and_restarted() -> None:
    reg = Registry(extra_drivers={"fake": FakeDriver}, extra_sims={"fake": SimWithDyingTask})
    SimWithDyingTask.lives = 0
    runner = DeviceRunner(device("simtask"), reg, noop, POLICY, FakeClock())
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runner.run())
        await until(lambda: SimWithDyingTask.lives == 2 and runner.connected.is_set())
        await asyncio.sleep(0.1)
        assert runner.connected.is_set() and not task.done()
        task.cancel()
    assert runner.faults == 1 and "device ended: CancelledError" in runner.last_failure


async def test_a_stray_cancellation_of_a_device_task_is_logged_and_restarted() -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        sup = Supervisor({"stray": device("stray")}, REG, noop, POLICY, clock)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(sup.run())
            await until(lambda: "stray" in sup.runners and sup.runners["stray"].connects == 1)
            runner, first = sup.runners["stray"], sup._tasks["stray"]
            first.cancel()  # nobody asked the supervisor: not a shutdown, not a reload
            await until(lambda: runner.connects == 2 and runner.connected.is_set())
            assert sup._tasks["stray"] is not first and sup.runners["stray"] is runner
            run.cancel()
    assert runner.faults == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "device task cancelled unexpectedly; restarting after backoff"
    ]
    assert clock.slept and 0.8 <= clock.slept[-1] <= 1.2
