"""A simulated Marlin printer behind a real pseudo-terminal: stock Marlin 2.1 by default.

It speaks the host protocol as Marlin's src/gcode/queue.cpp does. Bytes wait
in a serial receive buffer (`rx_buffer_size`, RX_BUFFER_SIZE, 128 bytes):
bytes that arrive while it is full are lost, as on a real board, and counted
(`rx_lost_bytes`). A line leaves the buffer only while the command ring
(`buffer_size` slots, BUFSIZE, 4) has room; then its line number is checked
first (`N` must be the last accepted N + 1, except on M110), then its
checksum. A bad line gets `Error:<why>, Last Line: <n>`, the receive buffer
is emptied, and the firmware asks `Resend: <n+1>`. Whether an `ok` follows
differs by version (`resend_ok`): "always" as 2.1's flush_and_request_resend,
"never" as some 2.0.x multi-serial builds, "sometimes" as 2.0.0's
ok_to_send(). `error_style = "octoprint"` words errors as OctoPrint's virtual
printer does (`expected line N got M`, `Checksum mismatch`, `Missing
checksum`, `Resend:N`). Commands run in order from the ring; each answers
`ok` (with `advanced_ok`: `ok N<n> P<planner free> B<ring free>`; off in
stock builds). Moves fill a planner of `planner_size` blocks that drains at
move speed; M109/M190 wait for heaters that heat over time; G4, G28, G29,
M400, M0/M1, M600 block, with busy keepalive (M113). The emergency parser
acts on M108, M112 and M410 the moment they arrive. After M112 the printer
is killed: it answers nothing until M999 (which stands for the reset a DTR
pulse or power cycle gives a real board).

Physics runs `time_factor` times faster than the clock. The link (baud,
latency timer), the parse rate and the host-facing timers (M113 keepalive,
M155 autoreport, M85 inactivity) run in real time.

`executed` records every command run, in order, without framing, so a test
can compare it with the file that was sent; `deadman_armed` tells whether an
M85 inactivity timer is set.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..serial import Received, SerialFirmware
from .gcode import checksum, code_of, strip_comment, words
from .simoptions import MarlinSimOptions


@dataclass
class SimCounters:
    accepted: int = 0
    checksum_errors: int = 0
    line_number_errors: int = 0
    no_checksum_errors: int = 0
    resends_asked: int = 0
    undetected_corruptions: int = 0  # noise that passed the checks and ran
    spurious_resends: int = 0
    kills: int = 0
    resets: int = 0
    m112_received_at: list[float] = field(default_factory=list)  # time.monotonic()


@dataclass
class Heater:
    temp: float
    target: float = 0.0
    power: int = 0

    def step(self, dt: float, rate: float, cool: float, ambient: float) -> None:
        goal = self.target if self.target > 0 else ambient
        if self.temp < goal - 0.05:
            self.temp = min(goal, self.temp + rate * dt)
            self.power = 127 if goal - self.temp > 2 else 40
        elif self.temp > goal + 0.05:
            self.temp = max(goal, self.temp - cool * dt)
            self.power = 0
        else:
            self.temp = goal
            self.power = 30 if self.target > 0 else 0


class MarlinSim(SerialFirmware):
    """Simulated Marlin printer; `endpoint` is a stable device path."""

    name = "marlin"
    Options = MarlinSimOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.opt: MarlinSimOptions = self.options  # type: ignore[assignment]
        self.executed: list[str] = []
        self.counters = SimCounters()
        self._rng = random.Random(self.opt.seed)
        self._ring_changed = asyncio.Event()
        self._gen = 0  # bumped by kill and reset: work begun before is void
        self._init_state()

    def _init_state(self) -> None:
        self.last_n = 0
        self.ring: deque[tuple[str, int | None]] = deque()
        # Simulated time at which each queued move ends: the planner drains by the
        # clock, with no task and no timer per block.
        self.planner: deque[float] = deque()
        self.pos = {"X": 0.0, "Y": 0.0, "Z": 0.0, "E": 0.0}
        self.relative = False
        self.relative_e = False
        self.feed_mm_min = 1500.0
        self.feed_pct = 100
        self.flow_pct = 100
        self.fan = 0
        self.hotend = Heater(self.opt.ambient_c)
        self.bed = Heater(self.opt.ambient_c)
        self.killed = False
        self.wait_for_user = False
        self.wait_for_heatup = False
        self.busy: str | None = None
        self.busy_since = 0.0
        self.keepalive_s = 2.0  # Marlin's DEFAULT_KEEPALIVE_INTERVAL
        self.autoreport_s = 0.0
        self.inactive_limit_s = 0.0  # M85
        self.last_command_at = time.monotonic()
        self.progress_pct: float | None = None
        self.message = ""

    # --- lifecycle ---

    def boot(self) -> None:
        self.reply("start")
        self.reply(f"echo:{self.opt.firmware_name}")
        self.reply("echo: Last Updated: 2026-11-25 | Author: (cellctl)")
        self.reply("echo:SD card ok")

    def start_tasks(self) -> None:
        if self.opt.signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, self._on_unplug_signal)
            loop.add_signal_handler(signal.SIGUSR2, self.reset)
        self.spawn(self._executor(), "executor")
        self.spawn(self._physics(), "heaters")
        self.spawn(self._host_timers(), "host-timers")

    def _on_unplug_signal(self) -> None:
        if self.host.plugged:
            self.spawn(self._unplug_for(self.opt.unplug_s), "unplug")

    async def _unplug_for(self, seconds: float) -> None:
        self.host.unplug()
        await asyncio.sleep(seconds)
        self.host.replug()

    async def __aexit__(self, *exc: Any) -> None:
        if self.opt.signals:
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGUSR1)
            loop.remove_signal_handler(signal.SIGUSR2)
        await super().__aexit__(*exc)

    def reset(self) -> None:
        """A board reset (DTR pulse, power, or the watchdog): everything starts over."""
        self.counters.resets += 1
        self._gen += 1
        self.clear_inbox()
        self._init_state()
        self._ring_changed.set()
        self.boot()

    def kill(self, why: str) -> None:
        if self.killed:
            return
        self.counters.kills += 1
        self._gen += 1
        self.killed = True
        self.hotend.target = self.bed.target = 0.0
        self.planner.clear()
        self.ring.clear()
        self.clear_inbox()
        self.reply(f"Error:{why}")
        self.reply("Error:Printer halted. kill() called!")
        self._ring_changed.set()

    # --- receive side: the emergency parser, then Marlin's get_serial_commands ---

    def on_arrival(self, line: Received) -> bool:
        self.last_command_at = time.monotonic()
        if not self.opt.emergency_parser:
            return False
        text = line.data.decode("ascii", "replace")
        body = text.lstrip()
        if body.startswith("N"):  # the emergency parser skips a line number
            i = 1
            while i < len(body) and (body[i].isdigit() or body[i] == " "):
                i += 1
            body = body[i:]
        cmd = code_of(body)
        if cmd == "M112":
            self.counters.m112_received_at.append(time.monotonic())
            self.kill("M112 Shutdown")
            return True
        if self.killed:
            return False
        if cmd == "M108":
            self.wait_for_user = self.wait_for_heatup = False
        elif cmd == "M410":
            self.planner.clear()
        return False

    async def execute(self, item: Received) -> None:
        raw = item.data.decode("ascii", "replace")
        text = strip_comment(raw.replace("\r", "").replace("\n", ""))
        text = text[: self.opt.max_cmd_size - 1]  # the rest of an overlong line is skipped
        if self.killed:
            if "M999" in text:
                self.reset()
            return
        if not text:
            return
        command = text.lstrip(" ")
        n: int | None = None
        if command.startswith("N"):
            is_m110 = "M110" in command
            npos = command
            if is_m110:
                second = command.find("N", 4)
                if second >= 0:
                    npos = command[second:]
            n = _leading_int(npos[1:])
            if n != self.last_n + 1 and not is_m110:
                self.counters.line_number_errors += 1
                return self._line_error("line", n)
            star = command.rfind("*")
            if star < 0:
                self.counters.no_checksum_errors += 1
                return self._line_error("no_checksum", n)
            if _leading_int(command[star + 1 :]) != checksum(command[:star].encode()):
                self.counters.checksum_errors += 1
                return self._line_error("checksum", n)
            self.last_n = n if n is not None else self.last_n
            body = command[:star]
            # drop the `N<n> ` prefix: the command is what follows
            i = 1
            while i < len(body) and body[i].isdigit():
                i += 1
            command = body[i:].strip()
        if item.corrupted:
            self.counters.undetected_corruptions += 1
        self.counters.accepted += 1
        if (
            n is not None
            and self.opt.spurious_resend_p > 0
            and self._rng_random() < self.opt.spurious_resend_p
        ):
            self.counters.spurious_resends += 1
            self.reply(f"Resend: {n}")
        if self.killed:
            return
        self.ring.append((command, n))
        self._ring_changed.set()

    def _rng_random(self) -> float:
        return self._rng.random()

    def rx_capacity(self) -> int | None:
        # Marlin's serial ring keeps one slot free to tell full from empty.
        return self.opt.rx_buffer_size - 1 if self.opt.rx_buffer_size else None

    async def ready_for_line(self) -> None:
        # get_serial_commands() returns at once while the ring is full: the line
        # stays in the receive buffer, and later bytes pile up behind it.
        while len(self.ring) >= self.opt.buffer_size and not self.killed:
            self._ring_changed.clear()
            await self._ring_changed.wait()

    @property
    def deadman_armed(self) -> bool:
        return self.inactive_limit_s > 0

    def _line_error(self, kind: str, got: int | None) -> None:
        last = self.last_n
        if self.opt.error_style == "octoprint":
            text = {
                "line": f"expected line {last + 1} got {got}",
                "no_checksum": "Missing checksum",
                "checksum": "Checksum mismatch",
            }[kind]
            self.reply(f"Error: {text}")
        else:
            text = {
                "line": "Line Number is not Last Line Number+1",
                "no_checksum": "No Checksum with line number",
                "checksum": "checksum mismatch",
            }[kind]
            self.reply(f"Error:{text}, Last Line: {last}")
        self.clear_inbox()  # Marlin empties its receive buffer
        self.counters.resends_asked += 1
        space = "" if self.opt.error_style == "octoprint" else " "
        self.reply(f"Resend:{space}{last + 1}")
        mode = self.opt.resend_ok
        if mode == "always" or (mode == "sometimes" and self._rng_random() < self.opt.resend_ok_p):
            self.reply("ok")

    # --- the command ring ---

    async def _executor(self) -> None:
        while True:
            while not self.ring:
                self._ring_changed.clear()
                await self._ring_changed.wait()
            command, n = self.ring[0]
            gen = self._gen
            self.busy, self.busy_since = "processing", time.monotonic()
            try:
                send_ok = await self._run(command)
            finally:
                self.busy = None
            if self.killed or gen != self._gen:
                continue
            self.executed.append(command)
            if send_ok:
                self._ok(n)
            if self.ring:
                self.ring.popleft()
            self._ring_changed.set()

    def _ok(self, n: int | None) -> None:
        if not self.opt.advanced_ok:
            self.reply("ok")
            return
        self._prune()
        p = self.opt.planner_size - len(self.planner)
        b = self.opt.buffer_size - len(self.ring)
        self.reply(f"ok N{n} P{p} B{b}" if n is not None else f"ok P{p} B{b}")

    async def _run(self, command: str) -> bool:
        """Run one command; False when it printed its own `ok` (M105)."""
        code = code_of(command)
        w = words(command)
        if code in ("G0", "G1", "G2", "G3"):
            await self._move(code, w)
        elif code == "G4":
            await self._wait_moves()
            seconds = w.get("S", 0.0) if not math.isnan(w.get("S", 0.0)) else 0.0
            seconds += (w.get("P", 0.0) if not math.isnan(w.get("P", 0.0)) else 0.0) / 1000
            await self.sim_sleep(seconds)
        elif code == "G28":
            await self._wait_moves()
            await self.sim_sleep(self.opt.home_s)
            axes = [a for a in "XYZ" if a in w] or ["X", "Y", "Z"]
            for a in axes:
                self.pos[a] = 0.0
        elif code == "G29":
            await self._wait_moves()
            await self.sim_sleep(self.opt.home_s * 3)
        elif code == "G90":
            self.relative = False
            self.relative_e = False
        elif code == "G91":
            self.relative = True
            self.relative_e = True
        elif code == "M82":
            self.relative_e = False
        elif code == "M83":
            self.relative_e = True
        elif code == "G92":
            for a in "XYZE":
                if a in w:
                    self.pos[a] = 0.0 if math.isnan(w[a]) else w[a]
        elif code in ("M104", "M109"):
            self.hotend.target = _num(w, "S", _num(w, "R", self.hotend.target))
            if code == "M109":
                await self._wait_heater(self.hotend)
        elif code in ("M140", "M190"):
            self.bed.target = _num(w, "S", _num(w, "R", self.bed.target))
            if code == "M190":
                await self._wait_heater(self.bed)
        elif code == "M105":
            self.reply("ok" + self._temps())
            return False
        elif code == "M114":
            p = self.pos
            self.reply(
                f"X:{p['X']:.2f} Y:{p['Y']:.2f} Z:{p['Z']:.2f} E:{p['E']:.2f} "
                f"Count X:{int(p['X'] * 80)} Y:{int(p['Y'] * 80)} Z:{int(p['Z'] * 400)}"
            )
        elif code == "M115":
            self._m115()
        elif code == "M110":
            self.last_n = int(_num(w, "N", float(self.last_n)))
        elif code == "M113":
            self.keepalive_s = min(60.0, _num(w, "S", self.keepalive_s))
        elif code == "M155":
            self.autoreport_s = _num(w, "S", self.autoreport_s)
        elif code == "M85":
            self.inactive_limit_s = _num(w, "S", 0.0)
        elif code == "M400":
            await self._wait_moves()
        elif code in ("M0", "M1", "M600"):
            await self._wait_moves()
            if code == "M600":
                self.reply("echo:Insert filament and send M108")
            await self._wait_user()
        elif code == "M108":
            self.wait_for_user = self.wait_for_heatup = False
        elif code == "M112":
            self.kill("M112 Shutdown")
        elif code == "M410":
            self.planner.clear()
        elif code == "M220":
            if "S" in w:
                self.feed_pct = int(w["S"])
            else:
                self.reply(f"FR:{self.feed_pct}%")
        elif code == "M221":
            if "S" in w:
                self.flow_pct = int(w["S"])
            else:
                self.reply(f"echo:E0 Flow: {self.flow_pct}%")
        elif code == "M106":
            self.fan = int(_num(w, "S", 255))
        elif code == "M107":
            self.fan = 0
        elif code == "M73":
            self.progress_pct = _num(w, "P", self.progress_pct or 0.0)
        elif code == "M117":
            self.message = command[4:].strip()
        elif code == "M999":
            self.last_n = self.last_n  # not killed: Marlin flushes and asks a resend
            self.clear_inbox()
            self.reply(f"Resend: {self.last_n + 1}")
        elif code in _ACCEPTED:
            pass
        else:
            self.reply(f'echo:Unknown command: "{command}"')
        return True

    def _temps(self) -> str:
        h, b = self.hotend, self.bed
        return (
            f" T:{h.temp:.2f} /{h.target:.2f} B:{b.temp:.2f} /{b.target:.2f}"
            f" @:{h.power} B@:{b.power}"
        )

    def _m115(self) -> None:
        o = self.opt
        self.reply(
            f"FIRMWARE_NAME:{o.firmware_name} SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin "
            f"PROTOCOL_VERSION:1.0 MACHINE_TYPE:{o.machine_type} EXTRUDER_COUNT:1 UUID:{o.uuid}"
        )
        caps = {
            "SERIAL_XON_XOFF": 0,
            "BINARY_FILE_TRANSFER": 0,
            "EEPROM": 1,
            "AUTOREPORT_TEMP": int(o.autoreport_temp),
            "AUTOREPORT_POS": 0,
            "PROGRESS": 1,
            "PRINT_JOB": 1,
            "HOST_ACTION_COMMANDS": 0,
            "EMERGENCY_PARSER": int(o.emergency_parser),
            "ADVANCED_OK": int(o.advanced_ok),
            "PROMPT_SUPPORT": 0,
        }
        for name, value in caps.items():
            self.reply(f"Cap:{name}:{value}")

    # --- motion ---

    async def _move(self, code: str, w: dict[str, float]) -> None:
        if "F" in w and not math.isnan(w["F"]) and w["F"] > 0:
            self.feed_mm_min = w["F"]
        start = dict(self.pos)
        for a in "XYZE":
            if a in w and not math.isnan(w[a]):
                rel = self.relative_e if a == "E" else self.relative
                self.pos[a] = start[a] + w[a] if rel else w[a]
        dx, dy = self.pos["X"] - start["X"], self.pos["Y"] - start["Y"]
        dz, de = self.pos["Z"] - start["Z"], self.pos["E"] - start["E"]
        if code in ("G2", "G3") and ("I" in w or "J" in w):
            i, j = w.get("I", 0.0), w.get("J", 0.0)
            r = math.hypot(i, j)
            a0 = math.atan2(-j, -i)
            a1 = math.atan2(dy - j, dx - i)
            sweep = (a0 - a1) if code == "G2" else (a1 - a0)
            sweep %= 2 * math.pi
            if sweep == 0:
                sweep = 2 * math.pi
            length = math.hypot(r * sweep, dz)
        else:
            length = math.sqrt(dx * dx + dy * dy + dz * dz) or abs(de)
        speed = min(self.feed_mm_min / 60.0 * self.feed_pct / 100.0, self.opt.max_feed_mm_s)
        duration = length / speed if speed > 0 else 0.0
        while True:
            self._prune()
            if len(self.planner) < self.opt.planner_size or self.killed:
                break
            await self._sleep_until(self.planner[0])
        if not self.killed and duration > 0:
            begin = max(self.now(), self.planner[-1] if self.planner else 0.0)
            self.planner.append(begin + duration)

    def _prune(self) -> None:
        t = self.now()
        while self.planner and self.planner[0] <= t:
            self.planner.popleft()

    async def _sleep_until(self, t_sim: float) -> None:
        await asyncio.sleep(max(0.0, (t_sim - self.now()) / self.time_factor))

    async def _wait_moves(self) -> None:
        while not self.killed:
            self._prune()
            if not self.planner:
                break
            await self._sleep_until(self.planner[-1])

    async def _wait_heater(self, heater: Heater) -> None:
        self.wait_for_heatup = True
        next_report = time.monotonic()
        while self.wait_for_heatup and not self.killed:
            if heater.target <= 0 or abs(heater.temp - heater.target) < 1.0:
                break
            now = time.monotonic()
            if now >= next_report:
                self.reply(self._temps().lstrip() + " W:?")
                next_report = now + 1.0
            await asyncio.sleep(0.02)
        self.wait_for_heatup = False

    async def _wait_user(self) -> None:
        self.wait_for_user = True
        self.busy, self.busy_since = "paused for user", time.monotonic() - self.keepalive_s
        while self.wait_for_user and not self.killed:
            await asyncio.sleep(0.01)
        self.busy, self.busy_since = "processing", time.monotonic()

    async def _physics(self) -> None:
        dt = 0.05
        while True:
            await asyncio.sleep(dt)
            if self.killed:
                continue
            sim_dt = dt * self.time_factor
            o = self.opt
            self.hotend.step(sim_dt, o.hotend_rate, o.cool_rate * 4, o.ambient_c)
            self.bed.step(sim_dt, o.bed_rate, o.cool_rate, o.ambient_c)

    async def _host_timers(self) -> None:
        next_report = time.monotonic()
        next_busy = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            if self.killed:
                continue
            now = time.monotonic()
            if self.autoreport_s > 0 and now >= next_report:
                self.reply(self._temps())
                next_report = now + self.autoreport_s
            busy = self.busy
            if (
                busy is not None
                and self.keepalive_s > 0
                and now - self.busy_since >= self.keepalive_s
                and now >= next_busy
            ):
                self.reply(f"echo:busy: {busy}")
                next_busy = now + self.keepalive_s
            self._prune()
            if self.busy is not None or self.planner:
                self.last_command_at = now  # a blocking command or moves: not inactive
            if self.inactive_limit_s > 0 and now - self.last_command_at > self.inactive_limit_s:
                self.kill("Inactive time kill")


_ACCEPTED = frozenset(
    "G10 G11 G20 G21 G29.1 G80 M17 M18 M84 M75 M76 M77 M78 M80 M81 M201 M203 M204 M205 "
    "M206 M207 M208 M209 M900 M907 M486 M106 M107 M141 M142 M300 M420 M500 M501 M503 "
    "M572 M593 M851 T0".split()
)


def _leading_int(s: str) -> int | None:
    s = s.lstrip()
    i = 1 if s[:1] in ("-", "+") else 0
    while i < len(s) and s[i].isdigit():
        i += 1
    try:
        return int(s[:i])
    except ValueError:
        return None


def _num(w: dict[str, float], key: str, default: float) -> float:
    v = w.get(key)
    return default if v is None or math.isnan(v) else v
