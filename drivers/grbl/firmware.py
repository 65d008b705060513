"""A model of GRBL 1.1 firmware for the simulator: no I/O, driven by `receive()` and
`advance()` with the current time, producing bytes in `take_output()`.

What it models, and how strictly:
- The 128-byte RX buffer. A line counts against it from its first byte until GRBL has
  answered it (`ok`/`error:N`). That is one line stricter than the firmware (which
  moves a line into its 80-byte line buffer before executing it), and it is exactly the
  host's character count: a full 128 is accepted, the 129th byte is an overflow, which
  is counted (`overflows`) and, as on the device, dropped.
- A planner of 15 blocks; G-code is not taken off the RX buffer while the planner is
  full. Moves take distance / feed (rapids: `$110..$112`), scaled by the overrides and
  divided by the time factor. G4, spindle changes, probing and `$H` wait for the
  planner to empty first.
- Realtime bytes (`?` `!` `~` 0x18 0x84 0x85 0x90-0x9D) act at once, also mid-line.
- Soft reset: flushes RX buffer and planner; while moving it is `ALARM:3`.
- Check mode (`$C`): lines parsed, answered, never moved; leaving it soft-resets.
- EEPROM writes (`$x=`, `$Nx=`, `$I=`, `$RST=`, `G10 L2/L20`, `G28.1`, `G30.1`) stop
  reception: anything the host sent behind such a line before its `ok` is lost and
  counted in `eeprom_violations`.
- `executed` records every line GRBL accepted outside check mode, in order.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cellctl_drivers.grbl.protocol import (
    grbl_line,
    isr_filter,
    needs_send_response,
    stored_build_info,
)

VERSION = "1.1h"
BUILD_DATE = "20190825"
BANNER = f"Grbl {VERSION} ['$' for help]"
UNLOCK_MSG = "[MSG:'$H'|'$X' to unlock]"

DEFAULT_SETTINGS: dict[int, str] = {
    0: "10", 1: "25", 2: "0", 3: "0", 4: "0", 5: "0", 6: "0",
    10: "1", 11: "0.010", 12: "0.002", 13: "0",
    20: "0", 21: "0", 22: "0", 23: "0", 24: "25.000", 25: "500.000", 26: "250", 27: "1.000",
    30: "1000", 31: "0", 32: "0",
    100: "250.000", 101: "250.000", 102: "250.000",
    110: "5000.000", 111: "5000.000", 112: "3000.000",
    120: "10.000", 121: "10.000", 122: "10.000",
    130: "300.000", 131: "300.000", 132: "100.000",
}  # fmt: skip

AXES = "XYZ"
Vec = tuple[float, float, float]


class MachineState(enum.Enum):
    IDLE = "Idle"
    RUN = "Run"
    HOLD = "Hold"
    JOG = "Jog"
    ALARM = "Alarm"
    DOOR = "Door"
    CHECK = "Check"
    HOME = "Home"


class GCodeError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class Block:
    line: str
    target: Vec
    duration: float  # model seconds at 100 % override
    rapid: bool = False
    jog: bool = False
    feed: float = 0.0
    line_number: int | None = None


class WaitKind(enum.Enum):
    SYNC = "sync"  # answer once the planner is empty
    DWELL = "dwell"  # then wait `seconds`
    HOMING = "homing"
    PROBE = "probe"


@dataclass
class Wait:
    kind: WaitKind
    seconds: float = 0.0  # model seconds, counted once the planner is empty
    started: float | None = None  # model time the timed part began
    after: Callable[[], None] | None = None


@dataclass
class Modal:
    motion: int = 0
    absolute: bool = True
    inches: bool = False
    feed: float = 0.0
    spindle: float = 0.0
    spindle_on: str = "M5"
    coolant: str = "M9"
    wcs: int = 54
    tool: int = 0


@dataclass
class Counters:
    overflows: int = 0
    overflow_bytes: int = 0
    eeprom_violations: int = 0
    rx_peak: int = 0
    rx_full_hits: int = 0
    status_reports: int = 0
    check_runs: int = 0  # times `$C` check mode was entered


@dataclass
class FirmwareConfig:
    time_factor: float = 1.0
    settings: dict[int, str] = field(default_factory=dict)
    build_info: str = ""
    rx_size: int = 128
    planner_blocks: int = 15
    line_numbers: bool = False  # build option N: `Ln:` in status reports
    start_alarm: int | None = None  # start in ALARM with this code (0: homing lock only)
    probe_z: float = -30.0  # machine Z where a probe touches the tool-setter
    hold_decel_s: float = 0.05
    homing_s: float = 0.5


_REALTIME = bytes([0x3F, 0x21, 0x7E, 0x18, *range(0x80, 0x100)])
_REALTIME_SET = frozenset(_REALTIME)
_WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))?")
_KNOWN_G = {0, 1, 2, 3, 4, 10, 17, 18, 19, 20, 21, 28, 28.1, 30, 30.1, 38.2, 38.3, 38.4,
            38.5, 40, 43.1, 49, 53, 54, 55, 56, 57, 58, 59, 61, 80, 90, 91, 91.1, 92, 92.1, 93,
            94}  # fmt: skip
_KNOWN_M = {0, 1, 2, 3, 4, 5, 7, 8, 9, 30, 56}


_FLAG_SETTINGS = frozenset({0, 1, 2, 3, 4, 5, 6, 10, 13, 20, 21, 22, 23, 26, 32})
_BOOL_SETTINGS = frozenset({4, 5, 6, 13, 20, 21, 22, 32})
_FLOAT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def _read_float(text: str, pos: int) -> tuple[float, int] | None:
    """GRBL's read_float: sign, digits, one point; no exponent, no inf/nan."""
    m = _FLOAT_NUMBER.match(text, pos)
    return (float(m.group()), m.end()) if m else None


def _f32(value: float) -> float:
    """Rounded to the AVR's 32-bit float, as GRBL keeps a setting."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return math.inf


def _parse_words(line: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    pos = 0
    for m in _WORD.finditer(line):
        if m.start() != pos:
            raise GCodeError(1)  # something that is not a letter where a word starts
        if m.group(2) is None:
            raise GCodeError(2)
        out.append((m.group(1), float(m.group(2))))
        pos = m.end()
    if pos != len(line):
        raise GCodeError(1)
    return out


class GrblFirmware:
    def __init__(self, config: FirmwareConfig, now: float) -> None:
        self.cfg = config
        self.settings = {**DEFAULT_SETTINGS, **config.settings}
        # As if typed with `$I=`: GRBL keeps it normalised (MILL-1 for mill-1).
        self.build_info = stored_build_info(config.build_info) or ""
        self.counters = Counters()
        self.executed: list[str] = []
        self.checked: list[str] = []
        self.errors: list[tuple[str, int]] = []
        self.alarms: list[int] = []
        self.mpos: Vec = (0.0, 0.0, 0.0)
        self.wcs: dict[int, Vec] = {n: (0.0, 0.0, 0.0) for n in range(54, 60)}
        self.g92: Vec = (0.0, 0.0, 0.0)
        self.g28: Vec = (0.0, 0.0, 0.0)
        self.g30: Vec = (0.0, 0.0, 0.0)
        self.tlo = 0.0
        self.probe: tuple[Vec, bool] = ((0.0, 0.0, 0.0), False)
        self.feed_ov = self.rapid_ov = self.spindle_ov = 100
        self._rx = bytearray()
        self._out = bytearray()
        self._planner: deque[Block] = deque()
        self._block_left = 0.0  # model seconds (at 100 %) left of the head block
        self._wait: Wait | None = None
        self._model_t = 0.0
        self._real_t = now
        self._hold_until: float | None = None  # model time Hold:1 becomes Hold:0
        self._report_wco = 0
        self._report_ov = 0
        self._reset_after_ok = False
        self._boot()

    # --- life cycle -----------------------------------------------------------------

    def _boot(self, alarm: bool | None = None) -> None:
        self.modal = Modal()
        self._rx.clear()
        self._planner.clear()
        self._block_left = 0.0
        self._wait = None
        self._hold_until = None
        self.state = MachineState.IDLE
        self.substate = 0
        self._report_wco = 0
        self._report_ov = 0
        self.feed_ov = self.rapid_ov = self.spindle_ov = 100
        if alarm is None:
            alarm = self.cfg.start_alarm is not None or self.settings.get(22, "0") == "1"
            if self.cfg.start_alarm:
                self._alarm(self.cfg.start_alarm, flush=False)
        self._emit(BANNER)
        if alarm:
            self.state = MachineState.ALARM
            self._emit(UNLOCK_MSG)

    def soft_reset(self) -> None:
        moving = self.state in (MachineState.RUN, MachineState.JOG, MachineState.HOME) or (
            self.state == MachineState.HOLD and self.substate == 1
        )
        was_alarm = self.state == MachineState.ALARM
        if moving:
            self._alarm(6 if self.state == MachineState.HOME else 3, flush=False)
        self._boot(alarm=moving or was_alarm)

    def _alarm(self, code: int, flush: bool = True) -> None:
        self.alarms.append(code)
        self._emit(f"ALARM:{code}")
        if flush:
            # GRBL resets itself after an alarm: buffers flushed, no answers to what was queued.
            self._rx.clear()
            self._planner.clear()
            self._block_left = 0.0
            self._wait = None
        self.state = MachineState.ALARM

    # --- I/O ------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        self._out += line.encode("ascii", "replace") + b"\r\n"

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the host. Realtime bytes act at once; the rest enter the RX buffer."""
        self.advance(now)
        plain = isr_filter(data)
        if len(plain) != len(data):
            for b in data:
                if b in _REALTIME_SET:
                    self._realtime(b)
        if plain:
            room = self.cfg.rx_size - len(self._rx)
            if len(plain) > room:
                # The 129th byte: a real GRBL loses it; the simulator counts it too.
                self.counters.overflows += 1
                self.counters.overflow_bytes += len(plain) - max(room, 0)
                plain = plain[: max(room, 0)]
            self._rx += plain
            n = len(self._rx)
            if n > self.counters.rx_peak:
                self.counters.rx_peak = n
            if n == self.cfg.rx_size and plain:
                self.counters.rx_full_hits += 1
        self.advance(now)

    @property
    def rx_used(self) -> int:
        return len(self._rx)

    @property
    def planner_used(self) -> int:
        return len(self._planner)

    # --- time -----------------------------------------------------------------------

    def _rate(self, block: Block) -> float:
        return (self.rapid_ov if block.rapid else self.feed_ov) / 100.0

    def advance(self, now: float) -> None:
        dt = max(0.0, now - self._real_t) * self.cfg.time_factor
        self._real_t = now
        self._model_t += dt
        self._move(dt)
        self._process_lines()

    def _move(self, dt: float) -> None:
        if self.state == MachineState.HOLD:
            if self._hold_until is not None and self._model_t >= self._hold_until:
                self.substate, self._hold_until = 0, None
            return
        if self.state not in (MachineState.RUN, MachineState.JOG):
            return
        while self._planner and dt > 0:
            block = self._planner[0]
            rate = self._rate(block)
            need = self._block_left / rate
            if dt < need:
                frac = (dt * rate) / self._block_left if self._block_left > 0 else 1.0
                self.mpos = tuple(  # type: ignore[assignment]
                    p + (t - p) * frac for p, t in zip(self.mpos, block.target, strict=True)
                )
                self._block_left -= dt * rate
                return
            dt -= need
            self.mpos = block.target
            self._planner.popleft()
            self._block_left = self._planner[0].duration if self._planner else 0.0
        if not self._planner:
            self.state = MachineState.IDLE

    def next_deadline(self, now: float) -> float | None:
        """Real time of the next change nobody else triggers (a block or a wait ending)."""
        tf = self.cfg.time_factor
        cands: list[float] = []
        if self.state == MachineState.HOLD and self._hold_until is not None:
            cands.append(now + max(0.0, self._hold_until - self._model_t) / tf)
        elif self.state in (MachineState.RUN, MachineState.JOG) and self._planner:
            cands.append(now + self._block_left / self._rate(self._planner[0]) / tf)
        w = self._wait
        if w is not None and w.started is not None:
            cands.append(now + max(0.0, w.started + w.seconds - self._model_t) / tf)
        return min(cands) if cands else None

    # --- the main loop: lines out of the RX buffer ----------------------------------

    def _process_lines(self) -> None:
        while True:
            if not self._finish_wait():
                return
            if self.state in (MachineState.HOME,):
                return
            nl, cr = self._rx.find(b"\n"), self._rx.find(b"\r")
            end = min(nl, cr) if nl >= 0 and cr >= 0 else max(nl, cr)
            if end < 0:
                return
            # What GRBL keeps of the line: upper-cased, no spaces, comments or `/`.
            line, overflow = grbl_line(bytes(self._rx[:end])).astuple()
            is_gcode = bool(line) and not line.startswith("$")
            if is_gcode and self.state != MachineState.CHECK:
                if len(self._planner) >= self.cfg.planner_blocks:
                    return  # the main loop blocks in the planner; the line stays buffered
            eeprom = bool(line) and needs_send_response(line)
            if eeprom and len(self._rx) > end + 1:
                self.counters.eeprom_violations += 1
                del self._rx[end + 1 :]  # reception stops while EEPROM is written
            del self._rx[: end + 1]
            self._answer(line, overflow)

    def _finish_wait(self) -> bool:
        """True when no wait holds the current line's answer back (any more)."""
        w = self._wait
        if w is None:
            return True
        if self._planner or self.state == MachineState.HOLD:
            return False
        if w.started is None:
            w.started = self._model_t
            if w.kind == WaitKind.HOMING:
                self.state = MachineState.HOME
            elif w.kind == WaitKind.PROBE:
                self.state = MachineState.RUN
        if self._model_t < w.started + w.seconds:
            return False
        self._wait = None
        if w.after is not None:
            w.after()
        if self.state in (MachineState.HOME,) or (
            w.kind == WaitKind.PROBE and self.state == MachineState.RUN
        ):
            self.state = MachineState.IDLE
        if self.state != MachineState.ALARM:
            self._emit("ok")
        return True

    def _answer(self, line: str, overflow: bool = False) -> None:
        if overflow:
            self._error(line, 11)
            return
        try:
            if not line:
                pass
            elif line.startswith("$"):
                self._system(line)
            else:
                self._gcode(line)
        except GCodeError as exc:
            self._error(line, exc.code)
            return
        if self._wait is None:
            self._emit("ok")
        if self._reset_after_ok:
            self._reset_after_ok = False
            self._boot(alarm=False)

    def _error(self, line: str, code: int) -> None:
        self.errors.append((line, code))
        self._emit(f"error:{code}")

    # --- $ commands -------------------------------------------------------------------

    def _require_idle(self) -> None:
        if self.state not in (MachineState.IDLE, MachineState.ALARM, MachineState.CHECK):
            raise GCodeError(8)

    def _system(self, line: str) -> None:
        cmd = line[1:].upper()
        if cmd == "":
            self._emit("[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]")
        elif cmd == "$":
            self._require_idle()
            for k in sorted(self.settings):
                self._emit(f"${k}={self.settings[k]}")
        elif cmd == "I":
            self._require_idle()
            self._emit(f"[VER:{VERSION}.{BUILD_DATE}:{self.build_info}]")
            opts = "V" + ("N" if self.cfg.line_numbers else "")
            self._emit(f"[OPT:{opts},{self.cfg.planner_blocks},{self.cfg.rx_size}]")
        elif cmd.startswith("I="):
            self._require_idle()
            self.build_info = line[3:]
        elif cmd == "G":
            m = self.modal
            self._emit(
                f"[GC:G{m.motion} G{m.wcs} G17 G{20 if m.inches else 21}"
                f" G{90 if m.absolute else 91} G94 {m.spindle_on} {m.coolant}"
                f" T{m.tool} F{m.feed:g} S{m.spindle:g}]"
            )
        elif cmd == "#":
            for n in range(54, 60):
                self._emit(f"[G{n}:{self._fmt(self.wcs[n])}]")
            self._emit(f"[G28:{self._fmt(self.g28)}]")
            self._emit(f"[G30:{self._fmt(self.g30)}]")
            self._emit(f"[G92:{self._fmt(self.g92)}]")
            self._emit(f"[TLO:{self.tlo:.3f}]")
            pos, ok = self.probe
            self._emit(f"[PRB:{self._fmt(pos)}:{int(ok)}]")
        elif cmd == "N":
            self._emit("$N0=")
            self._emit("$N1=")
        elif cmd == "C":
            if self.state == MachineState.CHECK:
                self._emit("[MSG:Disabled]")
                self._reset_after_ok = True  # leaving check mode soft-resets, after `ok`
                return
            if self.state != MachineState.IDLE:
                raise GCodeError(8)
            self.state = MachineState.CHECK
            self.counters.check_runs += 1
            self._emit("[MSG:Enabled]")
        elif cmd == "X":
            if self.state == MachineState.ALARM:
                self._emit("[MSG:Caution: Unlocked]")
                self.state = MachineState.IDLE
        elif cmd == "H":
            if self.settings.get(22, "0") != "1":
                raise GCodeError(5)
            self._require_idle()

            def homed() -> None:
                self.mpos = (0.0, 0.0, 0.0)

            self._wait = Wait(WaitKind.HOMING, self.cfg.homing_s, after=homed)
            self.state = MachineState.HOME
            self._wait.started = self._model_t
        elif cmd.startswith("J="):
            if self.state not in (MachineState.IDLE, MachineState.JOG):
                raise GCodeError(8)
            self._jog(cmd[2:])
        elif cmd.startswith("RST="):
            self._require_idle()
            what = cmd[4:]
            if what in ("$", "*"):
                self.settings = {**DEFAULT_SETTINGS}
            if what in ("#", "*"):
                self.wcs = {n: (0.0, 0.0, 0.0) for n in range(54, 60)}
            if what not in ("$", "#", "*"):
                raise GCodeError(3)
        elif cmd.startswith("N") and "=" in cmd:
            self._require_idle()
        elif "=" in cmd:
            self._require_idle()
            self._store_setting(cmd)
        elif cmd == "SLP":
            pass
        else:
            raise GCodeError(3)

    def _store_setting(self, cmd: str) -> None:
        """`$<n>=<value>` as GRBL 1.1h stores it (system.c, settings.c): numbers read
        without exponents, flags and small integers truncated (and reported as such),
        other values reported with 3 decimals (rpm with none), unknown numbers refused."""
        got = _read_float(cmd, 0)
        if got is None:
            raise GCodeError(2)
        param, pos = got
        if cmd[pos : pos + 1] != "=":
            raise GCodeError(3)
        got = _read_float(cmd, pos + 1)
        if got is None:
            raise GCodeError(2)
        value, pos = got
        if pos != len(cmd) or param > 255:
            raise GCodeError(3)
        n = int(param)  # GRBL casts the setting number to uint8_t
        if value < 0:
            raise GCodeError(4)
        if n >= 100:
            if n % 10 >= 3 or n > 132:
                raise GCodeError(3)
            self.settings[n] = f"{_f32(value):.3f}"
            return
        low = int(value) % 256  # uint8_t int_value = trunc(value)
        if n in _FLAG_SETTINGS:
            if n == 0 and low < 3:
                raise GCodeError(6)
            if n == 20 and low and self.settings.get(22) != "1":
                raise GCodeError(10)  # soft limits need homing
            self.settings[n] = str(int(bool(low))) if n in _BOOL_SETTINGS else str(low)
            if n == 22 and not low:
                self.settings[20] = "0"  # no homing: no soft limits either
        elif n in (30, 31):
            self.settings[n] = f"{_f32(value):.0f}"
        elif n in (11, 12, 24, 25, 27):
            self.settings[n] = f"{_f32(value):.3f}"
        else:
            raise GCodeError(3)

    @staticmethod
    def _fmt(v: Vec | tuple[float, ...]) -> str:
        return ",".join(f"{x:.3f}" for x in v)

    def _jog(self, text: str) -> None:
        ws = _parse_words(text)
        target = list(self.mpos)
        off = self._offset()
        absolute, feed = True, 0.0
        for letter, value in ws:
            if letter == "G" and value == 91:
                absolute = False
            elif letter == "G" and value in (90, 20, 21, 53):
                pass
            elif letter == "F":
                feed = value
            elif letter in AXES:
                i = AXES.index(letter)
                target[i] = value + (off[i] if absolute else self.mpos[i])
            else:
                raise GCodeError(16)
        if feed <= 0:
            raise GCodeError(22)
        self._plan(Block(f"$J={text}", tuple(target), 0.0, jog=True, feed=feed))  # type: ignore[arg-type]

    # --- G-code -----------------------------------------------------------------------

    def _offset(self) -> Vec:
        w = self.wcs[self.modal.wcs]
        return (w[0] + self.g92[0], w[1] + self.g92[1], w[2] + self.g92[2] + self.tlo)

    def _gcode(self, line: str) -> None:
        if self.state == MachineState.ALARM or self.state == MachineState.JOG:
            raise GCodeError(9)
        ws = _parse_words(line.upper())
        seen: set[str] = set()
        gs: list[float] = []
        ms: list[float] = []
        vals: dict[str, float] = {}
        for letter, value in ws:
            if letter == "G":
                g = round(value, 1)
                if g not in _KNOWN_G:
                    raise GCodeError(20)
                gs.append(g)
            elif letter == "M":
                if value not in _KNOWN_M:
                    raise GCodeError(20)  # M6 among them: GRBL 1.1 has no tool change
                ms.append(value)
            else:
                if letter in seen:
                    raise GCodeError(25)
                seen.add(letter)
                vals[letter] = value
        if "T" in vals and vals["T"] > 255:
            raise GCodeError(38)
        if "N" in vals and not (0 <= vals["N"] <= 9_999_999):
            raise GCodeError(27)
        if vals.get("F", 0.0) < 0 or vals.get("S", 0.0) < 0:
            raise GCodeError(4)
        m = self.modal
        check = self.state == MachineState.CHECK
        new = Modal(**vars(m))
        motion_word: int | None = None
        non_modal: float | None = None
        for g in gs:
            if g in (0, 1, 2, 3, 38.2, 38.3, 38.4, 38.5, 80):
                if motion_word is not None:
                    raise GCodeError(21)
                motion_word = int(g) if g == int(g) else -1
                if g in (0, 1, 2, 3, 80):
                    new.motion = int(g)
            elif g in (90, 91):
                new.absolute = g == 90
            elif g in (20, 21):
                new.inches = g == 20
            elif 54 <= g <= 59:
                new.wcs = int(g)
            elif g in (4, 10, 28, 28.1, 30, 30.1, 53, 92, 92.1, 43.1, 49):
                if non_modal is not None and g not in (53, 43.1, 49):
                    raise GCodeError(21)
                if g not in (53, 43.1, 49):
                    non_modal = g
        if "F" in vals:
            new.feed = vals["F"] * (25.4 if new.inches else 1.0)
        if "S" in vals:
            new.spindle = vals["S"]
        if "T" in vals:
            new.tool = int(vals["T"])
        spindle_change = False
        for mc in ms:
            if mc in (3, 4, 5):
                spindle_change = spindle_change or f"M{int(mc)}" != new.spindle_on
                new.spindle_on = f"M{int(mc)}"
            elif mc in (7, 8, 9):
                new.coolant = f"M{int(mc)}"
        axes = {k: v * (25.4 if new.inches else 1.0) for k, v in vals.items() if k in AXES}
        if non_modal == 4:
            if "P" not in vals:
                raise GCodeError(28)
            self.modal = new
            self._commit(line, check)
            if not check:
                self._wait = Wait(WaitKind.DWELL, vals["P"])
            return
        if non_modal == 10:
            self._g10(vals, axes, new)
            self.modal = new
            self._commit(line, check)
            return
        if non_modal in (28.1, 30.1):
            if not check:
                if non_modal == 28.1:
                    self.g28 = self.mpos
                else:
                    self.g30 = self.mpos
            self.modal = new
            self._commit(line, check)
            return
        if non_modal == 92:
            if not axes:
                raise GCodeError(26)
            off = list(self.g92)
            cur_w = [self.mpos[i] - self._offset()[i] for i in range(3)]
            for k, v in axes.items():
                i = AXES.index(k)
                off[i] = self.g92[i] + cur_w[i] - v
            if not check:
                self.g92 = tuple(off)  # type: ignore[assignment]
                self._report_wco = 0
            self.modal = new
            self._commit(line, check)
            return
        if non_modal == 92.1:
            if not check:
                self.g92 = (0.0, 0.0, 0.0)
            self.modal = new
            self._commit(line, check)
            return
        mode = motion_word if motion_word is not None else new.motion
        if mode == -1:
            self._probe(line, vals, axes, new, check)
            return
        if non_modal in (28, 30):
            home = self.g28 if non_modal == 28 else self.g30
            self.modal = new
            self._commit(line, check)
            if not check:
                self._plan(Block(line, home, self._rapid_time(home), rapid=True))
            return
        if axes and mode == 80:
            raise GCodeError(31)
        if motion_word is not None and motion_word in (2, 3) and not axes:
            raise GCodeError(32)
        if mode in (2, 3) and axes:
            if not ({"I", "J", "K", "R"} & set(vals)):
                raise GCodeError(35)
        if axes and mode in (1, 2, 3) and new.feed <= 0:
            raise GCodeError(22)
        target = self._target(axes, new, 53 in gs)
        self.modal = new
        self._commit(line, check)
        if check:
            return
        if spindle_change:
            self._wait = Wait(WaitKind.SYNC)
        if axes and mode in (0, 1, 2, 3):
            dist = math.dist(self.mpos if not self._planner else self._planner[-1].target, target)
            if mode in (2, 3):
                dist *= 1.5  # an arc is longer than its chord; close enough for timing
            if mode == 0:
                self._plan(Block(line, target, self._rapid_time(target), rapid=True,
                                 line_number=self._ln(vals)))  # fmt: skip
            else:
                self._plan(Block(line, target, dist / new.feed * 60.0, feed=new.feed,
                                 line_number=self._ln(vals)))  # fmt: skip
        for mc in ms:
            if mc in (0, 1):
                self._feed_hold()  # program pause: held until `~`
            elif mc in (2, 30):
                self._wait = Wait(WaitKind.SYNC)
                self.modal = Modal(tool=new.tool)
                self.g92 = (0.0, 0.0, 0.0)

    def _ln(self, vals: dict[str, float]) -> int | None:
        return int(vals["N"]) if self.cfg.line_numbers and "N" in vals else None

    def _commit(self, line: str, check: bool) -> None:
        (self.checked if check else self.executed).append(line)

    def _target(self, axes: dict[str, float], m: Modal, machine: bool) -> Vec:
        last = self._planner[-1].target if self._planner else self.mpos
        off = (0.0, 0.0, 0.0) if machine else self._offset()
        out = list(last)
        for k, v in axes.items():
            i = AXES.index(k)
            out[i] = v + off[i] if m.absolute else last[i] + v
        return (out[0], out[1], out[2])

    def _rapid_time(self, target: Vec) -> float:
        last = self._planner[-1].target if self._planner else self.mpos
        t = 0.0
        for i in range(3):
            rate = float(self.settings.get(110 + i, "1000")) or 1000.0
            t = max(t, abs(target[i] - last[i]) / rate * 60.0)
        return t

    def _g10(self, vals: dict[str, float], axes: dict[str, float], m: Modal) -> None:
        if "L" not in vals or "P" not in vals:
            raise GCodeError(28)
        p = int(vals["P"])
        n = m.wcs if p == 0 else 53 + p
        if n not in self.wcs:
            raise GCodeError(29)
        cur = list(self.wcs[n])
        if int(vals["L"]) == 2:
            for k, v in axes.items():
                cur[AXES.index(k)] = v
        elif int(vals["L"]) == 20:
            for k, v in axes.items():
                i = AXES.index(k)
                cur[i] = self.mpos[i] - v - self.g92[i] - (self.tlo if i == 2 else 0.0)
        else:
            raise GCodeError(20)
        if self.state != MachineState.CHECK:
            self.wcs[n] = (cur[0], cur[1], cur[2])
            self._report_wco = 0

    def _probe(
        self, line: str, vals: dict[str, float], axes: dict[str, float], m: Modal, check: bool
    ) -> None:
        if not axes:
            raise GCodeError(26)
        if m.feed <= 0:
            raise GCodeError(22)
        target = self._target(axes, m, False)
        self.modal = m
        self._commit(line, check)
        if check:
            return
        start_z = self.mpos[2]

        def done() -> None:
            z = self.cfg.probe_z
            if target[2] < z < start_z or math.isclose(target[2], z):
                pos = (target[0], target[1], z)
                self.mpos = pos
                self.probe = (pos, True)
                self._emit(f"[PRB:{self._fmt(pos)}:1]")
            else:
                self.probe = (target, False)
                self._emit(f"[PRB:{self._fmt(target)}:0]")
                self._alarm(5)

        travel = max(0.0, start_z - max(target[2], self.cfg.probe_z))
        self._wait = Wait(WaitKind.PROBE, travel / m.feed * 60.0, after=done)

    def _plan(self, block: Block) -> None:
        if block.jog:
            last = self.mpos
            block.duration = math.dist(last, block.target) / block.feed * 60.0
        if not self._planner:
            self._block_left = block.duration
        self._planner.append(block)
        if self.state == MachineState.IDLE:
            self.state = MachineState.JOG if block.jog else MachineState.RUN

    # --- realtime ---------------------------------------------------------------------

    def _feed_hold(self) -> None:
        if self.state in (MachineState.RUN, MachineState.JOG, MachineState.IDLE):
            if self.state == MachineState.JOG:
                self._jog_cancel()
                return
            moving = self.state == MachineState.RUN
            self.state = MachineState.HOLD
            if moving:
                self.substate = 1
                self._hold_until = self._model_t + self.cfg.hold_decel_s
            else:
                self.substate = 0

    def _jog_cancel(self) -> None:
        if self.state == MachineState.JOG:
            self._planner.clear()
            self._block_left = 0.0
            self.state = MachineState.IDLE

    def _realtime(self, b: int) -> None:
        if b == 0x3F:
            self._status()
        elif b == 0x21:
            self._feed_hold()
        elif b == 0x7E:
            if self.state in (MachineState.HOLD, MachineState.DOOR):
                self.state = MachineState.RUN if self._planner else MachineState.IDLE
                self.substate = 0
                self._hold_until = None
        elif b == 0x18:
            self.soft_reset()
        elif b == 0x84:
            if self.state not in (MachineState.ALARM, MachineState.CHECK):
                self.state = MachineState.DOOR
                self.substate = 0
                self._hold_until = None
        elif b == 0x85:
            self._jog_cancel()
        elif 0x90 <= b <= 0x9D:
            self._override(b)
        # Other bytes >= 0x80 are ignored, as GRBL does.

    def _override(self, b: int) -> None:
        def clamp(v: int) -> int:
            return max(10, min(200, v))

        step = {0x91: 10, 0x92: -10, 0x93: 1, 0x94: -1, 0x9A: 10, 0x9B: -10, 0x9C: 1, 0x9D: -1}
        if b == 0x90:
            self.feed_ov = 100
        elif b in (0x91, 0x92, 0x93, 0x94):
            self.feed_ov = clamp(self.feed_ov + step[b])
        elif b == 0x95:
            self.rapid_ov = 100
        elif b == 0x96:
            self.rapid_ov = 50
        elif b == 0x97:
            self.rapid_ov = 25
        elif b == 0x99:
            self.spindle_ov = 100
        elif b in (0x9A, 0x9B, 0x9C, 0x9D):
            self.spindle_ov = clamp(self.spindle_ov + step[b])
        self._report_ov = 0

    def _status(self) -> None:
        self.counters.status_reports += 1
        mask = int(float(self.settings.get(10, "1")))
        state = self.state.value
        if self.state in (MachineState.HOLD, MachineState.DOOR):
            state += f":{self.substate}"
        off = self._offset()
        parts = [state]
        if mask & 1:
            parts.append(f"MPos:{self._fmt(self.mpos)}")
        else:
            parts.append(
                f"WPos:{self._fmt(tuple(p - o for p, o in zip(self.mpos, off, strict=True)))}"
            )
        if mask & 2:
            free_blocks = self.cfg.planner_blocks - len(self._planner)
            parts.append(f"Bf:{free_blocks},{self.cfg.rx_size - len(self._rx)}")
        if self.cfg.line_numbers and self._planner and self._planner[0].line_number is not None:
            parts.append(f"Ln:{self._planner[0].line_number}")
        moving = self.state in (MachineState.RUN, MachineState.JOG) and self._planner
        feed = 0.0
        if moving:
            head = self._planner[0]
            feed = head.feed * self.feed_ov / 100 if not head.rapid else 0.0
        spindle = self.modal.spindle * self.spindle_ov / 100 if self.modal.spindle_on != "M5" else 0
        parts.append(f"FS:{feed:g},{spindle:g}")
        busy = self.state != MachineState.IDLE
        if self._report_wco <= 0:
            parts.append(f"WCO:{self._fmt(off)}")
            self._report_wco = 29 if busy else 9
            self._report_ov = max(self._report_ov, 1)  # never both in one report
        else:
            self._report_wco -= 1
            if self._report_ov <= 0:
                parts.append(f"Ov:{self.feed_ov},{self.rapid_ov},{self.spindle_ov}")
                acc = ("S" if self.modal.spindle_on == "M3" else "") + (
                    "C" if self.modal.spindle_on == "M4" else ""
                )
                acc += {"M7": "M", "M8": "F"}.get(self.modal.coolant, "")
                if acc:
                    parts.append(f"A:{acc}")
                self._report_ov = 19 if busy else 9
            else:
                self._report_ov -= 1
        self._out += ("<" + "|".join(parts) + ">\r\n").encode()
