"""GRBL 1.1 host-side protocol logic, free of I/O: line cleaning, the character-counting
window, which lines need send-response, tool-change interception, and reply and
status-report parsing. Everything here is unit-tested as pure logic."""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, field

# GRBL's line buffer is 80 bytes including the terminating NUL: a line may hold at most
# 79 significant characters (whitespace and comments are dropped before counting,
# protocol.c `char_counter >= LINE_BUFFER_SIZE-1`); one more is `error:11`.
MAX_LINE_CHARS = 79
RX_BUFFER_DEFAULT = 128

# Realtime bytes: acted on at once, never enter the RX buffer, need no newline.
RT_STATUS = b"?"
RT_HOLD = b"!"
RT_RESUME = b"~"
RT_RESET = b"\x18"
RT_DOOR = b"\x84"
RT_JOG_CANCEL = b"\x85"
REALTIME_BYTES = frozenset(b"?!~\x18") | frozenset(range(0x80, 0xB0))

_COMMENT = re.compile(r"\([^)]*\)|;.*$")
_WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")


def clean_line(raw: str) -> str:
    """What GRBL itself keeps of a line: no comments, no whitespace or control characters.

    Sending the cleaned form saves RX-buffer space and makes the host's byte count
    equal to what GRBL counts against its line limit. `%` program delimiters are dropped.
    """
    text = _COMMENT.sub("", raw)
    text = "".join(c for c in text if c > " " and c != "\x7f")
    return "" if text == "%" else text


# --- what GRBL itself makes of the bytes it receives (serial.c ISR, protocol.c main loop) ---

# Picked off by the serial interrupt, never in the RX buffer: `?` `!` `~` ctrl-X, and
# every byte above 0x7F (0x84 door, 0x85 jog cancel, 0x90-0xA1 overrides act; the others
# are thrown away). So a non-ASCII character never reaches a line, and may act on its way.
_ISR_PICKED = bytes([0x3F, 0x21, 0x7E, 0x18, *range(0x80, 0x100)])


def isr_filter(data: bytes) -> bytes:
    """The bytes GRBL's serial interrupt passes on to its RX buffer."""
    return data.translate(None, _ISR_PICKED)


@dataclass(frozen=True)
class GrblLine:
    text: str  # what the parser sees
    overflow: bool  # more than MAX_LINE_CHARS kept characters: GRBL answers error:11

    def astuple(self) -> tuple[str, bool]:
        return self.text, self.overflow


def grbl_line(data: bytes) -> GrblLine:
    """One line (no line end, realtime bytes already gone) as GRBL 1.1's protocol loop
    keeps it: bytes up to space (whitespace, control characters) and `/` (block delete,
    unsupported) dropped; `(` up to `)` and `;` to the end dropped as comments; letters
    upper-cased; DEL and `%` kept (the parser then refuses them). Past 79 kept characters
    the rest is dropped and the line is an overflow."""
    out = bytearray()
    paren = rest = overflow = False
    for c in data:
        if paren or rest or overflow:
            if paren and c == 0x29:  # `)` ends a `(` comment; the line resumes
                paren = False
            continue
        if c <= 0x20 or c == 0x2F:
            continue
        if c == 0x28:
            paren = True
        elif c == 0x3B:
            rest = True
        elif len(out) >= MAX_LINE_CHARS:
            overflow = True
        elif 0x61 <= c <= 0x7A:
            out.append(c - 0x20)
        else:
            out.append(c)
    return GrblLine(out.decode("latin-1"), overflow)


_BUILD_INFO_PREFIX = b"$I="


def stored_build_info(name: str) -> str | None:
    """What GRBL stores and reports (`[VER:…:<info>]`) after `$I=<name>`; None when the
    line is too long and GRBL refuses it (error:11) and stores nothing."""
    data = isr_filter(name.encode("utf-8"))
    for end in (b"\r", b"\n"):
        data = data.split(end, 1)[0]  # a line end ends the command
    line = grbl_line(_BUILD_INFO_PREFIX + data)
    return None if line.overflow else line.text[len(_BUILD_INFO_PREFIX) :]


def build_info_changes(name: str) -> list[str]:
    """Why GRBL would store `name` differently from how it is written (empty: it would not)."""
    why: list[str] = []
    raw = name.encode("utf-8")
    if any(c > 0x7F for c in raw):
        why.append("non-ASCII bytes are dropped (some act as realtime commands: 0x84 door …)")
    if any(ch in name for ch in "?!~\x18"):
        why.append("? ! ~ are realtime commands (status, feed hold, resume), not text")
    if "\r" in name or "\n" in name:
        why.append("a line end ends the command")
    kept = isr_filter(raw)
    if any(c <= 0x20 for c in kept if c not in (0x0A, 0x0D)):
        why.append("spaces and control characters are dropped")
    if b"/" in kept:
        why.append("'/' is dropped")
    if b"(" in kept or b";" in kept:
        why.append("'(' … ')' and ';' … are comments")
    if any(0x61 <= c <= 0x7A for c in kept):
        why.append("letters are upper-cased")
    if stored_build_info(name) is None:
        why.append(f"longer than GRBL's {MAX_LINE_CHARS}-character line with '$I='")
    return why


def words(line: str) -> list[tuple[str, float]]:
    """The (letter, value) words of a cleaned G-code line, letters upper-cased."""
    return [(m.group(1), float(m.group(2))) for m in _WORD.finditer(line.upper())]


def _has_code(ws: list[tuple[str, float]], letter: str, value: float) -> bool:
    return any(w == letter and abs(v - value) < 1e-6 for w, v in ws)


_EEPROM_DOLLAR = re.compile(r"^\$(?:\d+|N\d+|I|RST)=", re.IGNORECASE)


def needs_send_response(line: str) -> bool:
    """True for commands that write EEPROM: GRBL stops serial reception while writing,
    so nothing may follow them on the wire until their `ok`."""
    if _EEPROM_DOLLAR.match(line):
        return True
    if line.startswith("$"):
        return False
    ws = words(line)
    if _has_code(ws, "G", 10) and (_has_code(ws, "L", 2) or _has_code(ws, "L", 20)):
        return True
    return _has_code(ws, "G", 28.1) or _has_code(ws, "G", 30.1)


@dataclass(frozen=True)
class ToolChange:
    tool: int | None  # T word on the same line; None: the last T seen before
    rest: str  # the line without its M6 and T words ("" when nothing else)


_M6 = re.compile(r"M0*6(?![0-9.])", re.IGNORECASE)
_T = re.compile(r"T(\d+)", re.IGNORECASE)


def tool_change(line: str) -> ToolChange | None:
    """An `M6` (tool change) line, which GRBL 1.1 rejects with error:20, or None."""
    if line.startswith("$") or not _M6.search(line):
        return None
    t = _T.search(line)
    tool = int(t.group(1)) if t else None
    rest = _T.sub("", _M6.sub("", line))
    return ToolChange(tool, rest)


def tool_select(line: str) -> int | None:
    """The T word of a line (GRBL accepts and ignores it; the host remembers it for M6)."""
    if line.startswith("$"):
        return None
    t = _T.search(line)
    return int(t.group(1)) if t else None


class CharWindow:
    """Character-counting flow control: the bytes sent and not yet answered stay within
    the firmware's RX buffer. Answers (`ok`/`error:N`) come in send order and free a
    whole line each. A line may go out in pieces (`open` then `sent`): GRBL's buffer
    holds bytes, not lines, so the head of the next line can use the last free bytes."""

    def __init__(self, size: int = RX_BUFFER_DEFAULT) -> None:
        self.size = size
        self._lens: deque[int] = deque()
        self.used = 0
        self.peak = 0
        self.full_hits = 0  # how often the window was exactly full

    def __len__(self) -> int:
        return len(self._lens)

    @property
    def room(self) -> int:
        return self.size - self.used

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.size

    def open(self, nbytes: int) -> None:
        """A line of `nbytes` (newline included) starts; its bytes count once `sent`."""
        if nbytes > self.size:
            raise ValueError(f"a {nbytes}-byte line can never fit a {self.size}-byte buffer")
        self._lens.append(nbytes)

    def sent(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        if not self.fits(nbytes):
            raise OverflowError(f"{nbytes} bytes do not fit ({self.used}/{self.size} used)")
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        if self.used == self.size:
            self.full_hits += 1

    def push(self, nbytes: int) -> None:
        """A whole line sent at once."""
        if nbytes > self.size:
            raise ValueError(f"a {nbytes}-byte line can never fit a {self.size}-byte buffer")
        if not self.fits(nbytes):
            raise OverflowError(f"{nbytes} bytes do not fit ({self.used}/{self.size} used)")
        self.open(nbytes)
        self.sent(nbytes)

    def pop(self) -> int:
        """The oldest line was answered. Raises IndexError on an answer nobody waits for."""
        n = self._lens.popleft()
        self.used -= n
        return n

    def clear(self) -> None:
        """The firmware reset: it forgot every unanswered byte."""
        self._lens.clear()
        self.used = 0


# --- replies --------------------------------------------------------------------------


class ReplyKind(enum.Enum):
    OK = "ok"
    ERROR = "error"
    ALARM = "alarm"
    STATUS = "status"
    BANNER = "banner"
    MESSAGE = "message"  # [MSG:…]
    FEEDBACK = "feedback"  # any other [XXX:…]: VER, OPT, GC, PRB, G54 …
    SETTING = "setting"  # $n=value
    OTHER = "other"


@dataclass(frozen=True)
class Reply:
    kind: ReplyKind
    text: str
    code: int | None = None
    tag: str = ""  # FEEDBACK: VER, OPT, GC …; BANNER: the version


_BANNER = re.compile(r"^Grbl(?:HAL)?\s+(\S+)\s+\[.*\]", re.IGNORECASE)
_CODE = re.compile(r"^(error|ALARM):(\d+)$", re.IGNORECASE)
_SETTING = re.compile(r"^\$(\d+)=(.*)$")


def classify(line: str) -> Reply:
    line = line.strip()
    if line == "ok":
        return Reply(ReplyKind.OK, line)
    m = _CODE.match(line)
    if m:
        kind = ReplyKind.ERROR if m.group(1).lower() == "error" else ReplyKind.ALARM
        return Reply(kind, line, int(m.group(2)))
    if line.startswith("<") and line.endswith(">"):
        return Reply(ReplyKind.STATUS, line)
    m = _BANNER.match(line)
    if m:
        return Reply(ReplyKind.BANNER, line, tag=m.group(1))
    if line.startswith("[") and line.endswith("]"):
        tag, _, body = line[1:-1].partition(":")
        if tag == "MSG":
            return Reply(ReplyKind.MESSAGE, body)
        return Reply(ReplyKind.FEEDBACK, body, tag=tag)
    if _SETTING.match(line):
        return Reply(ReplyKind.SETTING, line)
    return Reply(ReplyKind.OTHER, line)


def parse_setting(line: str) -> tuple[int, str] | None:
    m = _SETTING.match(line.strip())
    return (int(m.group(1)), m.group(2)) if m else None


@dataclass(frozen=True)
class BuildInfo:
    version: str = ""  # "1.1h.20190825"
    info: str = ""  # the user's `$I=` string: the machine name
    options: str = ""  # OPT letters, e.g. "VL"
    planner_blocks: int | None = None
    rx_buffer: int | None = None

    @property
    def line_numbers(self) -> bool:
        return "N" in self.options


def parse_build_info(feedback: list[Reply]) -> BuildInfo:
    """From the `[VER:…]` and `[OPT:…]` lines of a `$I` answer."""
    version = info = options = ""
    blocks = rx = None
    for r in feedback:
        if r.tag == "VER":
            version, _, info = r.text.partition(":")
        elif r.tag == "OPT":
            parts = r.text.split(",")
            options = parts[0]
            if len(parts) > 1 and parts[1].isdigit():
                blocks = int(parts[1])
            if len(parts) > 2 and parts[2].isdigit():
                rx = int(parts[2])
    return BuildInfo(version, info, options, blocks, rx)


# --- status reports ---------------------------------------------------------------------

Vec = tuple[float, ...]


@dataclass(frozen=True)
class StatusReport:
    state: str  # Idle, Run, Hold, Jog, Alarm, Door, Check, Home, Sleep
    substate: int | None = None
    mpos: Vec | None = None
    wpos: Vec | None = None
    wco: Vec | None = None
    feed: float | None = None
    spindle: float | None = None
    overrides: tuple[int, int, int] | None = None  # feed, rapid, spindle (%)
    planner_free: int | None = None
    rx_free: int | None = None
    line: int | None = None
    pins: str | None = None  # present only when a pin is active; "" means none active
    accessories: str | None = None


def _vec(text: str) -> Vec:
    return tuple(float(x) for x in text.split(","))


def parse_status(text: str) -> StatusReport:
    """Parse `<Idle|MPos:…|FS:…|…>`. Raises ValueError on a malformed report."""
    if not (text.startswith("<") and text.endswith(">")):
        raise ValueError(f"not a status report: {text!r}")
    fields = text[1:-1].split("|")
    state, _, sub = fields[0].partition(":")
    if not state:
        raise ValueError(f"status report without a state: {text!r}")
    values: dict[str, object] = {"state": state, "substate": int(sub) if sub else None}
    for f in fields[1:]:
        key, _, val = f.partition(":")
        if key == "MPos":
            values["mpos"] = _vec(val)
        elif key == "WPos":
            values["wpos"] = _vec(val)
        elif key == "WCO":
            values["wco"] = _vec(val)
        elif key == "FS":
            feed, spindle = _vec(val)[:2]
            values["feed"], values["spindle"] = feed, spindle
        elif key == "F":
            values["feed"] = float(val)
        elif key == "Ov":
            ov = tuple(int(float(x)) for x in val.split(","))
            if len(ov) != 3:
                raise ValueError(f"Ov needs three values: {text!r}")
            values["overrides"] = ov
        elif key == "Bf":
            blocks, rx = (int(x) for x in val.split(","))
            values["planner_free"], values["rx_free"] = blocks, rx
        elif key == "Ln":
            values["line"] = int(val)
        elif key == "Pn":
            values["pins"] = val
        elif key == "A":
            values["accessories"] = val
        # Unknown fields (grblHAL adds some) are ignored, never fatal.
    return StatusReport(**values)  # type: ignore[arg-type]


@dataclass
class StatusTracker:
    """Fills in what a single report leaves out: GRBL sends WCO only every few reports
    and either MPos or WPos (per `$10`), so the last WCO is remembered to derive the other."""

    wco: Vec = (0.0, 0.0, 0.0)
    overrides: tuple[int, int, int] = (100, 100, 100)
    pins: str = ""
    last: StatusReport | None = None
    mpos: Vec = field(default=(0.0, 0.0, 0.0))
    wpos: Vec = field(default=(0.0, 0.0, 0.0))

    def update(self, report: StatusReport) -> StatusReport:
        if report.wco is not None:
            self.wco = report.wco
        if report.overrides is not None:
            self.overrides = report.overrides
        # `Pn:` is omitted when no pin is active.
        self.pins = report.pins or ""
        if report.mpos is not None:
            self.mpos = report.mpos
            self.wpos = tuple(m - o for m, o in zip(report.mpos, self.wco, strict=False))
        elif report.wpos is not None:
            self.wpos = report.wpos
            self.mpos = tuple(w + o for w, o in zip(report.wpos, self.wco, strict=False))
        self.last = report
        return report
