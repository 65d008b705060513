"""The simulated robot itself: a six-axis arm with a program table, no I/O.

`sim.py` puts this model behind a real asyncua server. Keeping the model
apart lets the server be torn down and rebuilt (the "server restart" fault)
while the robot goes on moving, as a real controller's arm does when only its
OPC UA stack restarts.

Robot states (strings, as many controllers expose them):
IDLE, RUNNING, PAUSED, STOPPED (stopped by host or by the heartbeat watchdog),
ESTOP, FAULT (a program failed; `error_code` says why).
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field


class RobotState(enum.StrEnum):
    IDLE = "IDLE"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    ESTOP = "ESTOP"
    FAULT = "FAULT"


class ErrorCode(enum.IntEnum):
    NONE = 0
    NOT_READY = 3
    INTERLOCK = 5
    UNKNOWN_PROGRAM = 7
    GRIPPER = 42


HOME = (0.0, -90.0, 90.0, 0.0, 90.0, 0.0)
AMPLITUDE = (60.0, 30.0, 40.0, 90.0, 45.0, 180.0)


@dataclass
class Start:
    at: float
    program: int
    via: str  # "method" or "handshake"
    run: int


@dataclass
class Robot:
    programs: dict[int, float]  # program number → cycle time, robot seconds
    failing: dict[int, int]  # program number → error code it fails with, halfway
    time_factor: float = 1.0
    heartbeat_timeout_s: float = 3.0
    state: RobotState = RobotState.IDLE
    active_program: int = 0
    progress: float = 0.0
    run_counter: int = 0
    done: bool = False
    error_code: int = 0
    alarm: str = ""
    last_cycle_s: float = 0.0
    door_closed: bool = True
    zone_clear: bool = True
    joints: list[float] = field(default_factory=lambda: list(HOME))
    starts: list[Start] = field(default_factory=list)
    watchdog_trips: int = 0
    watchdog_ok: bool = True
    _heartbeat: int | None = None
    _heartbeat_changed_at: float | None = None

    # --- commands -------------------------------------------------------

    def start(self, program: int, via: str) -> ErrorCode:
        if self.state != RobotState.IDLE:
            return ErrorCode.NOT_READY
        if not (self.door_closed and self.zone_clear):
            return ErrorCode.INTERLOCK
        if program not in self.programs:
            return ErrorCode.UNKNOWN_PROGRAM
        self.run_counter += 1
        self.starts.append(Start(time.monotonic(), program, via, self.run_counter))
        self.active_program = program
        self.progress = 0.0
        self.done = False
        self.error_code = 0
        self.alarm = ""
        self.state = RobotState.RUNNING
        return ErrorCode.NONE

    def pause(self) -> None:
        if self.state == RobotState.RUNNING:
            self.state = RobotState.PAUSED

    def resume(self) -> None:
        if self.state == RobotState.PAUSED and self.door_closed:
            self.state = RobotState.RUNNING

    def stop(self, reason: str = "") -> None:
        if self.state in (RobotState.RUNNING, RobotState.PAUSED):
            self.state = RobotState.STOPPED if reason else RobotState.IDLE
            self.alarm = reason
            self.active_program = 0

    def emergency_stop(self) -> None:
        self.state = RobotState.ESTOP
        self.alarm = "emergency stop"
        self.active_program = 0

    def reset(self) -> None:
        if self.state in (RobotState.ESTOP, RobotState.STOPPED, RobotState.FAULT):
            self.state = RobotState.IDLE
            self.error_code = 0
            self.alarm = ""

    def set_door(self, closed: bool) -> None:
        self.door_closed = closed
        if not closed:
            self.pause()

    # --- time -----------------------------------------------------------

    def heartbeat(self, value: int, now: float) -> None:
        if self._heartbeat is not None and value != self._heartbeat:
            self._heartbeat_changed_at = now
            self.watchdog_ok = True
        self._heartbeat = value

    def tick(self, dt: float, now: float) -> None:
        """Advance by `dt` wall seconds."""
        if (
            self.heartbeat_timeout_s > 0
            and self._heartbeat_changed_at is not None
            and self.watchdog_ok
            and now - self._heartbeat_changed_at > self.heartbeat_timeout_s
        ):
            # The host stopped changing the heartbeat: it is gone; stop the arm.
            self.watchdog_ok = False
            self.watchdog_trips += 1
            if self.state in (RobotState.RUNNING, RobotState.PAUSED, RobotState.IDLE):
                self.state = RobotState.STOPPED
                self.alarm = "heartbeat lost"
                self.active_program = 0
        if self.state != RobotState.RUNNING:
            return
        cycle = self.programs[self.active_program]
        self.progress = min(1.0, self.progress + dt * self.time_factor / max(cycle, 1e-6))
        phase = 2 * math.pi * self.progress
        for i in range(6):
            self.joints[i] = (
                HOME[i]
                + AMPLITUDE[i] * math.sin(phase + i * 0.3)
                - AMPLITUDE[i] * math.sin(i * 0.3) * (1 - self.progress)
            )
        fail = self.failing.get(self.active_program)
        if fail is not None and self.progress >= 0.5:
            self.state = RobotState.FAULT
            self.error_code = fail
            self.alarm = f"program {self.active_program} failed"
            self.active_program = 0
            return
        if self.progress >= 1.0:
            self.joints = list(HOME)
            self.last_cycle_s = cycle
            self.done = True
            self.state = RobotState.IDLE
            self.active_program = 0
