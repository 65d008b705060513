"""Robots and PLCs over OPC UA: a tag-map driver with program handshakes.

The device is described in config by its tags (node ids, namespaces named by
URI), which tags mean what (state, program handshake, heartbeat, commands)
and how its state values map onto PackML. Status tags arrive through one
subscription, polled tags through batched reads; both become metrics whose
samples carry the server's source timestamp and quality.

Threading: the asyncua client (session, subscription, reads, writes, calls,
keepalive) runs on its own event loop in a thread this driver owns
(`clientthread`), started on connect and joined on exit; `session` is the only
code that touches asyncua. Data changes come back to the daemon's loop in
batches (`tagmap.Coalescer`) into the value cache (`cache`); everything that
decides (PackML state, program steps in `handshake`, heartbeat, rate limits)
stays on the daemon's loop.

A lost session is re-created within `reconnect_grace_s`, every monitored item
restored; meanwhile every metric is published once with quality BAD and the
state is UNAVAILABLE. Past the grace, `serve()` raises LinkError and the
supervisor takes over. A step whose link drops re-reads the robot when the
session is back and never starts a program a second time.

PackML mapping (the `state.values` table of the config; the simulator's states):

    robot state       PackML      why
    IDLE              Idle        ready for a program
    RUNNING           Execute     a program runs
    PAUSED            Held        paused by host, operator or an open door
    STOPPED           Stopped     stopped by host or by the heartbeat watchdog
    ESTOP             Aborted     emergency stop: `reset` clears it
    FAULT             Aborted     a program failed; the error code says why
    (link down)       Unavailable nothing is known
    (unmapped value)  Stopped     with the raw value in the status detail
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from cellctl.driver import DriverContext, ProgressSink, TaskGroup
from cellctl.errors import CellError, LinkError, NotSupported, WrongDevice
from cellctl.model import (
    DeviceState,
    DeviceStatus,
    MetricSpec,
    MetricValue,
    Quality,
    Sample,
    Setup,
    Step,
    StepResult,
)

from .boundary import AccessDenied, Refused, TypeMismatch, translate
from .cache import TagCache
from .clientthread import ClientThread
from .datatypes import next_beat
from .handshake import ProgramRun, SessionLost, program_number
from .options import ActionSpec, OpcUaOptions, TagSpec
from .quiet import quiet_asyncua
from .ratelimit import RateLimiter
from .session import Session, TrustList
from .tagmap import VARIANT_FOR, Coalescer, TagMap

T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    """A session as the daemon's loop sees it: the client-side object, its
    delivery channel, and whether it has been lost."""

    session: Session
    sink: Coalescer
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def set_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


class OpcUaDriver:
    """Robots and PLCs over OPC UA: tag map, subscriptions, program handshake."""

    name: ClassVar[str] = "opcua"
    Options: ClassVar[type[OpcUaOptions]] = OpcUaOptions
    simulator: ClassVar[str] = "opcua-robot"

    def __init__(self, ctx: DriverContext, options: OpcUaOptions) -> None:
        self.ctx = ctx
        self.o = options
        self.log = ctx.logger()
        # Checked at connect: a constructor that raises would escape the supervisor.
        self.url = ctx.endpoint or options.endpoint or ""
        self.tags = TagMap(options, self.log)
        self._trust = TrustList(self.log)
        self._thread = ClientThread(
            f"opcua-{ctx.device_id}", lambda exc: translate(exc, f"OPC UA {self.url}")
        )
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self.cache = TagCache(
            ctx.device_id,
            lambda: self.ctx.emit,
            options.state,
            self.tags.metric_tags,
            self._connected.is_set,
        )
        self._dead = asyncio.Event()
        self._generation = 0
        self._limiter = RateLimiter(
            options.max_writes_per_s, burst=max(4, int(options.max_writes_per_s / 2))
        )
        self._step_lock = asyncio.Lock()
        self.stop_requested = False
        self.stop_cause = "stopped on request"
        self._heartbeat: MetricValue = 0  # the last beat written
        self.reconnects = 0
        self.metric_tags = self.tags.metric_tags
        self.poll_tags = self.tags.poll_tags
        self.sub_tags = self.tags.sub_tags

    # --- contract: identity -------------------------------------------------

    def metrics(self) -> Sequence[MetricSpec]:
        return [
            MetricSpec(n, t.type, t.unit, t.description, t.writable)
            for n, t in self.metric_tags.items()
        ]

    def status(self) -> DeviceStatus:
        return DeviceStatus(state=self.cache.state, detail=self.cache.detail)

    @property
    def state(self) -> DeviceState:
        return self.cache.state

    @property
    def detail(self) -> str:
        return self.cache.detail

    def value(self, tag: str) -> MetricValue | None:
        return self.cache.value(tag)

    @property
    def client_thread(self) -> ClientThread:
        """The thread the asyncua client runs on (tests check it is gone after exit)."""
        return self._thread

    # --- connect / disconnect --------------------------------------------------

    async def __aenter__(self) -> Self:
        quiet_asyncua()
        self._dead.clear()
        await self._thread.start()
        try:
            self._link = await self._open()
        except BaseException:
            await self._thread.stop()
            raise
        self._connected.set()
        self.cache.derive_state()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        link, self._link = self._link, None
        self._connected.clear()
        self._dead.set()
        if link is not None:
            await self._close(link)
        await self._thread.stop()
        self.cache.set_state(DeviceState.UNAVAILABLE, "disconnected")

    async def _close(self, link: _Link) -> None:
        link.sink.close()  # nothing from this session is delivered any more
        with contextlib.suppress(CellError):
            await self._thread.run(link.session.close, within=5.0)

    async def _on_client(self, work: Callable[[], Awaitable[T]], within: float | None) -> T:
        """Run work on the client thread; only cellctl errors come back."""
        return await self._thread.run(work, within)

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        holder: list[_Link] = []

        def lost(reason: str) -> None:
            # Client thread: tell the daemon's loop (closed loop: nobody left to tell).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(holder[0].set_lost, reason)

        sink = Coalescer(loop, self.cache.publish)
        session = Session(
            url=self.url,
            device_id=self.ctx.device_id,
            options=self.o,
            tags=self.tags,
            trust=self._trust,
            sink=sink,
            on_lost=lost,
            log=self.log,
        )
        link = _Link(session, sink)
        holder.append(link)
        try:
            fresh = await self._on_client(session.open, within=self.o.timeout_s * 6 + 3.0)
        except BaseException:
            sink.close()
            raise
        self._generation += 1
        self.cache.publish(fresh)
        return link

    def _live(self) -> _Link:
        link = self._link
        if link is None or not self._connected.is_set():
            raise LinkError(f"OPC UA {self.url}: not connected")
        return link

    # --- serve: polling, heartbeat, reconnect -------------------------------------

    async def serve(self) -> None:
        while True:
            link = self._live()
            try:
                async with TaskGroup() as tg:
                    # The subscription needs no task here: asyncua's publish loop on
                    # the client thread feeds the Coalescer.
                    tg.create_task(self._on_client(link.session.poll, None), name="opcua-poll")
                    tg.create_task(self._beat(link), name="opcua-heartbeat")
                    tg.create_task(self._watch(link), name="opcua-watch")
            except BaseExceptionGroup as group:
                _, rest = group.split(SessionLost)
                if rest is not None:
                    # A refused write or the like: one cellctl error, not a group.
                    first = _first_leaf(rest)
                    self._dead.set()
                    if isinstance(first, CellError):
                        raise first from None
                    raise translate(first, f"OPC UA {self.url}") from first
            await self._reconnect(link)

    async def _watch(self, link: _Link) -> None:
        await link.lost.wait()
        raise SessionLost(link.reason)

    async def _beat(self, link: _Link) -> None:
        # The heartbeat ticks on the daemon's loop on purpose: if that loop hangs,
        # the robot must see the beat stop, even though the client thread lives on.
        hb = self.o.heartbeat
        if hb is None:
            return
        # Wraps at the node's own type (a Byte after 255, an Int16 after 32767), or
        # toggles a Boolean: every beat is a change the robot can see, for ever.
        vtype = link.session.vtypes.get(hb.tag) or VARIANT_FOR[self.o.tags[hb.tag].type]
        while True:
            self._heartbeat = next_beat(self._heartbeat, vtype)
            try:
                await self._write(link, hb.tag, self._heartbeat)
            except LinkError as exc:
                link.set_lost(str(exc))
                return
            await asyncio.sleep(hb.interval_s)

    async def _reconnect(self, old: _Link) -> None:
        """Re-create the session within the grace period, or raise LinkError."""
        self._connected.clear()
        self._link = None
        reason = old.reason or "session lost"
        self.log.warning("OPC UA session lost; re-creating it", reason=reason)
        old.sink.close()  # before the stale marks: no good value of the old session after them
        self.cache.mark_stale(reason)
        await self._close(old)
        deadline = time.monotonic() + self.o.reconnect_grace_s
        delay = 0.2
        last = reason
        while True:
            try:
                link = await self._open()
            except WrongDevice:
                self._dead.set()
                raise
            except LinkError as exc:
                last = str(exc)
                if time.monotonic() + delay > deadline:
                    self._dead.set()
                    raise LinkError(f"OPC UA session lost and not re-created: {last}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        self._link = link
        self._connected.set()
        self.reconnects += 1
        self.cache.derive_state()
        self.log.info("OPC UA session re-created; subscriptions restored")
        self.cache.notify()

    # --- reading ------------------------------------------------------------------

    def _read_timeout(self, n: int) -> float:
        chunks = max(1, -(-n // self.o.max_nodes_per_read))
        return self.o.timeout_s * (chunks + 1)

    async def read_tags(self, names: list[str]) -> list[Sample]:
        """Batched read of tags (one request per `max_nodes_per_read`); no cache update."""
        link = self._live()
        return await self._on_client(
            lambda: link.session.read(names), within=self._read_timeout(len(names))
        )

    async def fresh(self, names: list[str | None]) -> dict[str, MetricValue]:
        """Read tags now (not from the cache) and store them; for decisions that matter."""
        wanted = [n for n in names if n is not None]
        try:
            link = self._live()
            samples = await self._on_client(
                lambda: link.session.read(wanted), within=self._read_timeout(len(wanted))
            )
        except LinkError as exc:
            raise SessionLost(str(exc)) from None
        if self._link is not link or link.lost.is_set():
            # The session died while the answer travelled: it decides nothing.
            raise SessionLost(link.reason or "link lost")
        self.cache.store(samples)
        return {s.name: s.value for s in samples if s.quality != Quality.BAD}

    # --- waiting on the cache ------------------------------------------------------

    async def wait(self, pred: Callable[[], bool], within: float) -> bool:
        """Wait until pred() holds on the cached values; False on timeout.

        Raises SessionLost as soon as the link is down, LinkError when it is gone."""
        generation = self._generation
        try:
            async with asyncio.timeout(within):
                while True:
                    if self._dead.is_set():
                        raise LinkError(f"OPC UA {self.url}: link lost")
                    if not self._connected.is_set() or self._generation != generation:
                        raise SessionLost("link lost")
                    if pred():
                        return True
                    # Wake on value changes and, at least every 0.2 s, to notice a dropped link.
                    await self.cache.changed(0.2)
        except TimeoutError:
            return False

    async def wait_reconnected(self) -> None:
        """Wait for serve() to re-create the session; LinkError if it gives up."""
        while not self._connected.is_set():
            if self._dead.is_set():
                raise LinkError(f"OPC UA {self.url}: link lost and not re-created")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._connected.wait()

    # --- writing and commands ----------------------------------------------------

    async def _write(
        self,
        link: _Link,
        tag: str,
        value: MetricValue,
        *,
        urgent: bool = False,
        within: float | None = None,
    ) -> None:
        if not urgent:
            await self._limiter.acquire()
        await self._on_client(
            lambda: link.session.write(tag, value), within=within or self.o.timeout_s + 1.0
        )

    async def write(self, tag: str, value: MetricValue) -> None:
        """Rate-limited write on the current session (program handshakes)."""
        await self._write(self._live(), tag, value)

    async def write_tag(self, tag: str, value: MetricValue) -> None:
        """Write a configured tag (rate-limited)."""
        await self._write(self._live(), tag, value)

    async def call(
        self,
        obj: str,
        method: str,
        args: Sequence[MetricValue],
        *,
        urgent: bool = False,
        within: float | None = None,
    ) -> list[Any]:
        """Call a method on the current session (rate-limited unless urgent)."""
        link = self._live()
        if not urgent:
            await self._limiter.acquire()
        return await self._on_client(
            lambda: link.session.call(obj, method, args), within=within or self.o.timeout_s + 1.0
        )

    async def _action(self, key: str, *, urgent: bool = False, within: float | None = None) -> None:
        spec: ActionSpec | None = getattr(self.o, key)
        if spec is None:
            raise NotSupported(f"no {key} configured for this device")
        link = self._live()
        if spec.tag is not None:
            await self._write(link, spec.tag, spec.value, urgent=urgent, within=within)
            return
        assert spec.method is not None and spec.object is not None
        try:
            await self.call(spec.object, spec.method, spec.args, urgent=urgent, within=within)
        except Refused as exc:
            raise NotSupported(f"{key}: the robot refused ({exc.status})") from None

    async def pause(self) -> None:
        await self._action("pause")

    async def resume(self) -> None:
        await self._action("resume")

    async def stop(self) -> None:
        self.stop_requested = True
        self.stop_cause = "stopped by an operator stop"
        await self._action("stop")

    async def emergency_stop(self) -> None:
        self.stop_requested = True
        self.stop_cause = "stopped by an emergency stop"
        # Bounded in time, and never behind the write rate limiter.
        await self._action("emergency_stop", urgent=True, within=min(self.o.timeout_s, 0.9))

    async def reset(self) -> None:
        await self._action("reset")

    async def change_setup(self, to: Setup) -> None:
        raise NotSupported("a robot's changeover (gripper, fixture) is done by an operator")

    # --- running a program ----------------------------------------------------------

    async def run(self, step: Step, progress: ProgressSink) -> StepResult:
        spec = self.o.program
        if spec is None:
            raise NotSupported("no program configured: this device runs no job steps")
        number = program_number(spec, step)
        async with self._step_lock:
            self.stop_requested = False
            state_tag = self.o.state.tag if self.o.state else None
            return await ProgramRun(self, spec, number, step, state_tag).run(progress)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["AccessDenied", "OpcUaDriver", "OpcUaOptions", "TagSpec", "TypeMismatch"]
