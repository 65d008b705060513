"""The daemon: wires the parts, owns the top TaskGroup, handles signals and systemd.

SIGTERM/SIGINT stop the cell within `supervisor.shutdown_timeout_s`; SIGHUP
re-reads the config file: an invalid one is rejected and the running config
stays, a valid one is applied device by device (see Supervisor.reload).

Before anything else the daemon takes the state directory's lock (one daemon
per state directory, cellctl/statelock.py) and checks the store (a damaged
one is moved aside and named in one error). A full disk does not stop it: it
runs degraded, says so (log and systemd STATUS), and recovers when space
returns (docs/jobs.md, "When the disk is full").
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import structlog

from cellctl import config as config_mod
from cellctl import logs, startcheck
from cellctl.commands_jobs import JobBridge
from cellctl.config import Cell, SupervisorSection
from cellctl.errors import ConfigError
from cellctl.events import EventBus
from cellctl.hotfolder import HotFolder
from cellctl.jobs.service import JobService
from cellctl.model import JobState
from cellctl.notify import Notifier, watchdog_interval
from cellctl.registry import Registry
from cellctl.retention import run_retention
from cellctl.statelock import StateLock
from cellctl.store import DEFAULT_FILE, Store, StoreError, transaction
from cellctl.supervisor import Supervisor
from cellctl.tasks import TaskGroup
from cellctl.telemetry.facts import JobFacts
from cellctl.telemetry.service import MqttService

log = structlog.get_logger("cellctl.app")

STORE_WATCH_S = 2.0  # how often the free space of the state directory is looked at

Component = Callable[[], Coroutine[Any, Any, None]]
"""A long-running part of the daemon (store writer, MQTT, scheduler): runs until cancelled."""


class _Stop(Exception):
    pass


class App:
    def __init__(
        self, cell: Cell, registry: Registry | None = None, notifier: Notifier | None = None
    ) -> None:
        self.cell = cell
        self.registry = registry or Registry()
        self.notifier = notifier or Notifier()
        self.bus = EventBus()
        self.supervisor = Supervisor(
            cell.devices, self.registry, self.bus.publish, cell.config.supervisor
        )
        self.components: dict[str, Component] = {}
        # The journal every component shares (jobs, telemetry spool); opened by run().
        self.store = Store(cell.state_dir / DEFAULT_FILE, check=True)
        self.jobs = JobService(self.store, self.supervisor, self.bus, lambda: self.cell)
        self.components["jobs"] = self.jobs.run
        self.components["retention"] = lambda: run_retention(
            self.store, self.jobs, lambda: self.cell.config.store
        )
        # None, or why the store is degraded ("disk full", "low on space").
        self.degraded: str | None = None
        # The hot folder is read at start; a reload does not move it.
        self.hotfolder: HotFolder | None = None
        if cell.hotfolder is not None:
            self.hotfolder = HotFolder(cell.hotfolder, self.jobs, lambda: self.cell.config.jobs)
            self.components["hotfolder"] = self.hotfolder.run
        self.mqtt: MqttService | None = None
        if cell.config.mqtt is not None:
            self.mqtt = MqttService(
                cell,
                self.bus,
                self.supervisor,
                store=self.store,
                jobs=JobBridge(self.jobs),
                facts=JobFacts(self.jobs),
                plans=self.jobs.plan_feed,
            )
            self.components["mqtt"] = self.mqtt.run
        self.sparkplug: SparkplugService | None = None
        if cell.config.mqtt is not None and cell.config.mqtt.sparkplug is not None:
            # Loaded only when configured: protobuf and the generated module cost ~3 MiB.
            from cellctl.telemetry.sparkplug.service import SparkplugService

            mqtt = self.mqtt
            self.sparkplug = SparkplugService(
                cell,
                self.bus,
                self.supervisor,
                commands=lambda: mqtt.commands if mqtt is not None else None,
                spool_depth=lambda: mqtt.spool.counters.depth if mqtt and mqtt.spool else 0,
                after=mqtt.ready if mqtt is not None else None,
                open_jobs=self._open_jobs,
                store=self.store,
            )
            self.components["sparkplug"] = self.sparkplug.run
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.reloads = 0

    async def _open_jobs(self) -> list[tuple[str, JobState]]:
        """The jobs not yet ended and their states (Sparkplug's job counts at start)."""
        open_states = [s for s in JobState if not s.terminal]
        return [(j.id, j.state) for j in await self.jobs.list_jobs(open_states)]

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 when the store cannot be used (a
        damaged one is moved aside first; the log line says what to do). Raises
        AlreadyRunning when another daemon holds the state directory."""
        with StateLock(self.cell.state_dir):
            return await self._run()

    async def _run(self) -> int:
        apply_thread_switch(self.cell.config.supervisor)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        force: asyncio.TimerHandle | None = None
        code = 0
        log.info(
            "cell starting",
            cell=self.cell.name,
            config=str(self.cell.source),
            devices=len(self.cell.devices),
        )
        try:
            if self.mqtt is not None:
                await self.mqtt.preflight()  # an open broker: ConfigError, nothing started
            async with self.store, TaskGroup() as tg:
                tg.create_task(self.supervisor.run(), name="supervisor")
                for name, component in self.components.items():
                    tg.create_task(component(), name=name)
                tg.create_task(self._announce_ready(), name="ready")
                tg.create_task(self._reloader(), name="reloader")
                tg.create_task(self._status_loop(), name="status")
                tg.create_task(self._store_watch(), name="store-watch")
                interval = watchdog_interval()
                if interval:
                    tg.create_task(self._watchdog(interval), name="watchdog")
                await self._stop.wait()
                log.info("cell stopping")
                self.notifier.stopping()
                # Every teardown step is bounded on its own; this is the last resort.
                force = loop.call_later(
                    self.cell.config.supervisor.shutdown_timeout_s, self._force_exit
                )
                raise _Stop
        except* _Stop:
            pass
        except* StoreError as group:
            # Damaged (at start, or found while running), or not openable: one line, no
            # traceback. A full disk never gets here: its writers carry on without it.
            log.error("the cell stops: its store cannot be used", error=str(group.exceptions[0]))
            code = 1
        finally:
            if force is not None:
                force.cancel()  # stopped in time (matters when the loop lives on, as in tests)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            gc.unfreeze()  # a process that lives on (tests, benchmarks) collects it again
        log.info("cell stopped")
        self.notifier.close()
        return code

    def _force_exit(self) -> None:
        log.error(
            "shutdown took longer than its bound; exiting hard",
            bound_s=self.cell.config.supervisor.shutdown_timeout_s,
        )
        os._exit(1)

    async def _announce_ready(self) -> None:
        await self.supervisor.started.wait()
        while not self.supervisor.all_tried():
            await asyncio.sleep(0.05)
        self.notifier.ready(self.supervisor.summary())
        log.info("cell ready", summary=self.supervisor.summary())
        freeze_startup_objects()

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: a blocked loop stops the pings and
        # systemd restarts the daemon.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _status_loop(self) -> None:
        last = ""
        while True:
            summary = self.supervisor.summary()
            if self.degraded:
                summary = f"degraded ({self.degraded}); {summary}"
            if summary != last:
                self.notifier.status(summary)
                last = summary
            await asyncio.sleep(1.0)

    async def _store_watch(self) -> None:
        """Say when the store is degraded (disk full, or below the free-space floor) and
        when it is not any more; after a full disk, probe with a small write once space
        is back, so that the store knows it can write again without waiting for traffic."""
        while True:
            floor = int(self.cell.config.store.min_free_mb * 1e6)
            try:
                free: int | None = self.store.free_bytes()
            except OSError:
                free = None
            if self.store.full and free is not None and free >= floor:
                try:
                    await self.store.call(_probe_write)
                except StoreError:
                    pass
            if self.store.full:
                now: str | None = "disk full"
            elif free is not None and free < floor:
                now = "low on disk space"
            else:
                now = None
            if now != self.degraded:
                if now is None:
                    log.warning("store no longer degraded", free_mb=_mb(free))
                else:
                    log.error(
                        "store degraded: new jobs are refused; stop, pause, emergency stop"
                        " and telemetry go on",
                        why=now,
                        free_mb=_mb(free),
                        floor_mb=self.cell.config.store.min_free_mb,
                        state_dir=str(self.cell.state_dir),
                    )
                self.degraded = now
            await asyncio.sleep(STORE_WATCH_S)

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> bool:
        path = self.cell.source
        log.info("reloading config", config=str(path))
        try:
            new = await asyncio.to_thread(config_mod.load, path, self.registry)
            warnings = await asyncio.to_thread(startcheck.refuse, new)
        except ConfigError as exc:
            log.error("new config rejected; keeping the running one", problems=exc.problems)
            self.notifier.status("config reload rejected: " + exc.problems[0])
            return False
        logs.configure(new.config.logging.level.value, new.config.logging.format)
        for line in warnings:
            log.warning("config warning", problem=line)
        actions = await self.supervisor.reload(new.devices)
        self.cell = new
        self.reloads += 1
        log.info("config reloaded", actions=actions)
        return True


def _probe_write(conn: Any) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO telemetry_counters (name, value) VALUES ('store_probe', 1)"
            " ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e6, 1)


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, asyncua's type tables, the loaded config and
    jobs) out of the cyclic collector's reach. Each full collection scanned all of it:
    about 100 ms with the loop stopped, the tail of the emergency-stop latency
    (benchmarks/command_load.py). Frozen objects are still freed by reference
    counting; only cycles among them wait, until the cell stops (`gc.unfreeze`)."""
    gc.collect()
    gc.freeze()


def apply_thread_switch(cfg: SupervisorSection) -> None:
    """Measured in benchmarks/opcua_io.py: at 5 ms a 1,000-item OPC UA subscription's
    client thread cost four streaming printers 2–3 % of their rate, at 1 ms about 1 %."""
    sys.setswitchinterval(cfg.thread_switch_ms / 1000)


def run_daemon(path: Path, log_format: Literal["json"] | None = None) -> int:
    """Entry point of `cellctl run`: exit 0 on a clean stop. Raises ConfigError.
    `log_format`: `cellctl run --json` asks for JSON log lines whatever the config says."""
    registry = Registry()
    cell = config_mod.load(path, registry)
    warnings = startcheck.refuse(cell)  # what `cellctl check` says, in the same words
    logs.configure(cell.config.logging.level.value, log_format or cell.config.logging.format)
    for line in warnings:
        log.warning("config warning", problem=line)
    app = App(cell, registry)
    return asyncio.run(app.run())
