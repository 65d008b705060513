"""Per-device lifecycle: start the simulator when asked, connect, serve, back off, repeat.

Each device runs in its own task inside the supervisor's TaskGroup. Whatever a
driver does (raise, hang on connect, lose its link) stays inside that task:
the supervisor catches it at this boundary, marks the device unavailable,
waits out a jittered exponential backoff and tries again. One bad device
never takes another down, nor the daemon. The device's life and each of its
connections run in child tasks of the device task (`DeviceRunner.run`), so
even a driver that raises CancelledError or a BaseException, or leaves a
cancel request on its task, only ends one connection: logged as an error,
restarted after backoff. Only the cell's shutdown (or a reload) ends a device.

A `backend = "sim"` device's simulator runs as a child process of the daemon
(cellctl/simchild.py) unless `[supervisor] simulators = "in-process"`: the
child's exit ends the device's life like a lost link, and after the backoff a
new child starts and the driver reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

import structlog

from cellctl.backoff import Backoff
from cellctl.config import DeviceConfig, SimPlacement, SupervisorSection
from cellctl.driver import Driver, DriverContext, EventSink, ProgressSink, Simulator
from cellctl.errors import CellError, LinkError, WrongDevice
from cellctl.model import DeviceState, Event, StateChanged, Step, StepOutcome, StepResult
from cellctl.registry import Registry
from cellctl.simchild import SimChild, SimulatorExited
from cellctl.tasks import TaskGroup

log = structlog.get_logger("cellctl.supervisor")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def supervisor_backoff(policy: SupervisorSection, rng: random.Random | None = None) -> Backoff:
    return Backoff(
        policy.backoff_initial_s,
        policy.backoff_max_s,
        policy.backoff_multiplier,
        policy.jitter,
        rng=rng or random.Random(),
    )


class DeviceRunner:
    """Owns one device: its simulator (for `backend = "sim"`), its driver, its state."""

    def __init__(
        self,
        config: DeviceConfig,
        registry: Registry,
        emit: EventSink,
        policy: SupervisorSection,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self._registry = registry
        self._emit_outer = emit
        self._policy = policy
        self._clock = clock or RealClock()
        self.backoff = supervisor_backoff(policy, rng)
        self.log = log.bind(device=self.id)
        self.driver: Driver | None = None
        self.state = DeviceState.UNAVAILABLE
        self.last_error = ""  # cleared on connect, so that a new failure is logged again
        self.last_failure = ""  # kept: what went wrong last, for status displays
        self.connects = 0
        self.failures = 0
        self.faults = 0  # ends that were no clean driver error: a driver bug, logged as error
        self.delays: list[float] = []
        self.step_lock = asyncio.Lock()
        self.connected = asyncio.Event()

    @property
    def busy(self) -> bool:
        return self.step_lock.locked()

    def _emit(self, event: Event) -> None:
        if isinstance(event, StateChanged) and event.device_id == self.id:
            if self.driver is None:
                return  # connecting or torn down: the supervisor reports those states itself
            self.state = event.state
        self._emit_outer(event)

    def _set_unavailable(self, reason: str) -> None:
        if self.state != DeviceState.UNAVAILABLE:
            previous, self.state = self.state, DeviceState.UNAVAILABLE
            self._emit_outer(StateChanged(self.id, DeviceState.UNAVAILABLE, previous, reason))

    async def run(self) -> None:
        """Run until cancelled: never returns, never raises anything but CancelledError.

        The device's life (its simulator, then connection after connection) runs
        in a task of its own, and each connection in a task of its own again, so
        nothing a driver or simulator does can end or poison this task: not an
        exception of any class, not a CancelledError it raises itself, not a
        cancel request it leaves behind on its task. Whatever ends that life
        other than our own cancellation is logged as an error and the device
        starts again after a backoff.
        """
        self._set_unavailable("starting")
        while True:
            fault = await self._isolated(self._life(), "life")
            exited = _sim_exit(fault)
            if exited is not None:  # its process died: started again, like any device
                self._failed(str(exited), exited)
                self._set_unavailable("simulator exited")
            else:
                self._fault("device", fault or RuntimeError("device life returned"))
            await self._wait_backoff()

    async def _life(self) -> None:
        async with self._endpoint() as (endpoint, child):
            if child is None:
                await self._connections(endpoint)
                return
            async with TaskGroup() as tg:
                # The child's end ends this life (SimulatorExited), connections and all.
                tg.create_task(child.wait_exit(), name=f"device:{self.id}:sim")
                tg.create_task(self._connections(endpoint), name=f"device:{self.id}:links")

    async def _connections(self, endpoint: str | None) -> None:
        while True:
            fault = await self._isolated(self._one_connection(endpoint), "connection")
            if fault is not None:
                self._fault("connection", fault)
            await self._wait_backoff()

    async def _isolated(self, work: Coroutine[Any, Any, None], what: str) -> BaseException | None:
        """Run `work` in a task of its own; return what it raised, or None if it returned.

        A CancelledError from `work` comes back as a value: only our own
        cancellation (shutdown, reload) is raised here, after `work` has stopped.
        The task is owned right here: awaited, and cancelled if we are.
        """
        task = asyncio.get_running_loop().create_task(work, name=f"device:{self.id}:{what}")
        try:
            await asyncio.wait((task,))
        finally:
            while not task.done():  # we were cancelled: stop `work` before we go
                task.cancel()
                await asyncio.wait((task,), timeout=self._policy.disconnect_timeout_s)
                if not task.done():
                    self.log.error("driver ignores cancellation; still waiting", task=what)
        try:
            task.result()
        except (KeyboardInterrupt, SystemExit):
            raise  # asyncio stops the loop for these anyway: the process is ending
        except BaseException as exc:  # whatever else it was: the caller reports it
            return exc
        return None

    def _fault(self, where: str, exc: BaseException) -> None:
        self.failures += 1
        self.faults += 1
        self.last_error = self.last_failure = f"{where} ended: {type(exc).__name__}: {exc}"
        self.connected.clear()
        self.driver = None
        self._set_unavailable("driver fault")
        self.log.error(
            "device task ended unexpectedly; restarting after backoff",
            error=self.last_error,
            exc_info=exc,
        )

    @contextlib.asynccontextmanager
    async def _endpoint(self) -> AsyncIterator[tuple[str | None, SimChild | None]]:
        if self.config.common.backend != "sim":
            yield None, None
            return
        if self._policy.simulators == SimPlacement.PROCESS:
            sim_name = await self._installed_sim()
            if sim_name is not None:
                async with self._child(sim_name) as child:
                    yield child.endpoint, child
                return
        while True:
            try:
                driver_cls = self._registry.driver(self.config.driver)
                sim_cls: type[Simulator] = self._registry.simulator(driver_cls.simulator)
                sim = sim_cls(self.config.sim or sim_cls.Options())
                await sim.__aenter__()
            except Exception as exc:  # a broken simulator must not stop the cell
                self._failed(f"simulator failed to start: {exc}", exc)
                await self._clock.sleep(self.backoff.next())
                continue
            break
        self.log.info("simulator started", endpoint=sim.endpoint)
        try:
            yield sim.endpoint, None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    sim.__aexit__(None, None, None), self._policy.disconnect_timeout_s
                )

    async def _installed_sim(self) -> str | None:
        """The simulator's name if `cellctl sim` can run it; None for a test's in-process
        class. Retried after backoff while the driver itself cannot be loaded."""
        while True:
            try:
                name = self._registry.driver(self.config.driver).simulator
            except Exception as exc:
                self._failed(f"simulator failed to start: {exc}", exc)
                await self._clock.sleep(self.backoff.next())
                continue
            return name if self._registry.simulator_installed(name) else None

    @contextlib.asynccontextmanager
    async def _child(self, sim_name: str) -> AsyncIterator[SimChild]:
        while True:
            child = SimChild(
                sim_name,
                self.config.sim,
                self.log,
                start_timeout_s=self._policy.sim_start_timeout_s,
                stop_timeout_s=self._policy.disconnect_timeout_s,
            )
            try:
                await child.__aenter__()
            except (CellError, OSError) as exc:
                self._failed(f"simulator failed to start: {exc}", exc)
                await self._clock.sleep(self.backoff.next())
                continue
            break
        self.log.info("simulator started", endpoint=child.endpoint, pid=child.pid)
        try:
            yield child
        finally:
            await child.__aexit__(None, None, None)

    def _failed(self, message: str, exc: BaseException) -> None:
        self.failures += 1
        repeated = message == self.last_error
        self.last_error = self.last_failure = message
        if repeated:
            self.log.debug("device still failing", error=message, failures=self.failures)
        elif isinstance(exc, CellError | TimeoutError):
            self.log.warning("device failed", error=message)
        else:  # a bug in a driver: keep the traceback, once
            self.log.error("device driver raised unexpectedly", error=message, exc_info=exc)

    async def _one_connection(self, endpoint: str | None) -> None:
        """Connect, serve until the link is lost, close. Runs in a task of its own."""
        driver_cls = self._registry.driver(self.config.driver)
        ctx = DriverContext(device_id=self.id, emit=self._emit, endpoint=endpoint, log=self.log)
        driver = driver_cls(ctx, self.config.options)
        try:
            try:
                async with asyncio.timeout(self._policy.connect_timeout_s):
                    await driver.__aenter__()
            except Exception as exc:
                reason = "connect timed out" if isinstance(exc, TimeoutError) else str(exc)
                self._failed(f"{type(exc).__name__}: {reason}", exc)
                if isinstance(exc, WrongDevice):
                    self.backoff.exhaust()
                return
            connected_at = self._clock.monotonic()
            self.connects += 1
            if self.last_error:
                self.log.info("device connected after failures", failures=self.failures)
            else:
                self.log.info("device connected")
            self.last_error = ""
            self.driver = driver
            self.state = driver.status().state
            self._emit_outer(
                StateChanged(self.id, self.state, DeviceState.UNAVAILABLE, "connected")
            )
            self.connected.set()
            try:
                await driver.serve()
                reason = "link closed"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self._failed(reason, exc)
            if self._clock.monotonic() - connected_at >= self._policy.stable_after_s:
                self.backoff.reset()
            self.log.info("device disconnected", reason=reason)
        finally:
            self.connected.clear()
            self.driver = None
            self._set_unavailable("disconnected")
            await self._close(driver)

    async def _wait_backoff(self) -> None:
        delay = self.backoff.next()
        self.delays.append(delay)
        await self._clock.sleep(delay)

    async def _close(self, driver: Driver) -> None:
        try:
            async with asyncio.timeout(self._policy.disconnect_timeout_s):
                await driver.__aexit__(None, None, None)
        except Exception as exc:  # the contract says never raises; survive drivers that do
            self.log.warning("driver disconnect failed", error=f"{type(exc).__name__}: {exc}")

    async def run_step(self, step: Step, progress: ProgressSink) -> StepResult:
        """Run a step on the connected driver, holding the device busy meanwhile."""
        async with self.step_lock:
            driver = self.driver
            if driver is None:
                raise LinkError(f"device {self.id} is not connected")
            try:
                return await driver.run(step, progress)
            except LinkError as exc:
                return StepResult(StepOutcome.INTERRUPTED, str(exc))


def _sim_exit(fault: BaseException | None) -> SimulatorExited | None:
    """The SimulatorExited that ended a device's life, if that is what ended it."""
    if isinstance(fault, SimulatorExited):
        return fault
    if isinstance(fault, BaseExceptionGroup):
        match, rest = fault.split(SimulatorExited)
        if match is not None and rest is None:
            return _sim_exit(match.exceptions[0])
    return None


class Supervisor:
    """Runs every enabled device; `reload()` applies a new config device by device."""

    def __init__(
        self,
        devices: Mapping[str, DeviceConfig],
        registry: Registry,
        emit: EventSink,
        policy: SupervisorSection,
        clock: Clock | None = None,
        runner_factory: Callable[..., DeviceRunner] = DeviceRunner,
    ) -> None:
        self._registry = registry
        self._emit = emit
        self._policy = policy
        self._clock = clock
        self._factory = runner_factory
        self._configs = dict(devices)
        self.runners: dict[str, DeviceRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: TaskGroup | None = None
        self._closing = False
        self.started = asyncio.Event()

    def _start(self, cfg: DeviceConfig) -> None:
        runner = self._factory(cfg, self._registry, self._emit, self._policy, self._clock)
        self.runners[cfg.id] = runner
        self._spawn(runner)

    def _spawn(self, runner: DeviceRunner) -> None:
        assert self._tg is not None
        task = self._tg.create_task(runner.run(), name=f"device:{runner.id}")
        task.add_done_callback(lambda t: self._ended(runner, t))
        self._tasks[runner.id] = task

    def _ended(self, runner: DeviceRunner, task: asyncio.Task[None]) -> None:
        """Only shutdown and `_stop` (reload) may end a device task. Any other end is
        logged as an error; a stray cancellation restarts the device after its backoff
        (an exception, which `DeviceRunner.run` never lets out, takes the group down)."""
        if self._closing or self._tasks.get(runner.id) is not task:
            return
        del self._tasks[runner.id]
        runner.faults += 1
        if not task.cancelled():
            runner.log.error("device task failed", error=repr(task.exception()))
            return
        runner.log.error("device task cancelled unexpectedly; restarting after backoff")
        assert self._tg is not None
        delay = runner.backoff.next()
        self._tg.create_task(self._respawn(runner, delay), name=f"respawn:{runner.id}")

    async def _respawn(self, runner: DeviceRunner, delay: float) -> None:
        await (self._clock or RealClock()).sleep(delay)
        if self.runners.get(runner.id) is runner and runner.id not in self._tasks:
            self._spawn(runner)

    async def _stop(self, dev_id: str) -> None:
        task = self._tasks.pop(dev_id, None)
        self.runners.pop(dev_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        async with TaskGroup() as tg:
            self._tg = tg
            for cfg in self._configs.values():
                if cfg.common.enabled:
                    self._start(cfg)
            self.started.set()
            try:
                await asyncio.Event().wait()
            finally:
                self._closing = True  # the group now cancels every device: no restarts

    def all_tried(self) -> bool:
        """Every device connected or failed at least once: the moment for READY=1."""
        return all(r.connects or r.failures for r in self.runners.values())

    async def reload(self, devices: Mapping[str, DeviceConfig]) -> dict[str, str]:
        """Apply a new device set. Returns what happened to each device id."""
        actions: dict[str, str] = {}
        new = {k: v for k, v in devices.items() if v.common.enabled}
        for dev_id in list(self.runners):
            if dev_id not in new:
                await self._stop_when_idle(dev_id)
                actions[dev_id] = "removed"
        for dev_id, cfg in new.items():
            old = self.runners.get(dev_id)
            if old is None:
                self._start(cfg)
                actions[dev_id] = "added"
            elif old.config.raw_equal_key == cfg.raw_equal_key:
                actions[dev_id] = "unchanged"
            elif old.busy:
                # A reload never interrupts a running step: restart once it ends.
                assert self._tg is not None
                old.log.info("config changed; restart waits for the running step to end")
                self._tg.create_task(self._restart_when_idle(cfg), name=f"reload:{dev_id}")
                actions[dev_id] = "restart pending"
            else:
                await self._stop_when_idle(dev_id)
                self._start(cfg)
                actions[dev_id] = "restarted"
        self._configs = dict(devices)
        return actions

    async def _restart_when_idle(self, cfg: DeviceConfig) -> None:
        await self._stop_when_idle(cfg.id)
        self._start(cfg)

    async def _stop_when_idle(self, dev_id: str) -> None:
        runner = self.runners[dev_id]
        async with runner.step_lock:
            await self._stop(dev_id)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.runners.values():
            counts[r.state.label] = counts.get(r.state.label, 0) + 1
        parts = [f"{n} {s}" for s, n in sorted(counts.items())]
        return f"{len(self.runners)} devices: " + (", ".join(parts) if parts else "none")

    def snapshot(self) -> dict[str, Any]:
        return {
            dev_id: {"state": r.state.label, "error": r.last_error}
            for dev_id, r in self.runners.items()
        }
