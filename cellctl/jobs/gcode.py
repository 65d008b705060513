"""What a G-code file says about itself: slicer metadata, extents, line count, duration.

Slicers write their settings as comments: PrusaSlicer and OrcaSlicer as
`; key = value` lines (a config block at the end, a summary at the top), Cura
as `;KEY:value` header lines (`;TIME:`, `;MINX:` … for the Marlin flavour,
`;PRINT.TIME:`, `;PRINT.SIZE.MAX.X:`, `;EXTRUDER_TRAIN.0.NOZZLE.DIAMETER:` for
Griffin). When a file carries no time estimate, the duration is estimated
from the moves and their feed rates.

Parsing reads the file once, line by line: call it off the event loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cellctl.jobs.content import clipped_lines

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_PRUSA_KV = re.compile(r"^;\s*([A-Za-z_][\w \[\]()./-]*?)\s*=\s*(.*?)\s*$")
_CURA_KV = re.compile(r"^;([A-Z_][A-Z0-9_.]*):\s*(.*?)\s*$")
_WORD = re.compile(r"([A-Z])\s*([-+]?(?:\d+\.?\d*|\.\d+))")

# The last comment a slicer writes, by the name it gives itself: a file that names its
# slicer but lacks this line was cut short (a copy still being written, a full disk).
END_MARKERS = {
    "prusaslicer": "; prusaslicer_config = end",
    "superslicer": "; superslicer_config = end",
    "orcaslicer": "; config_block_end",
    "bambustudio": "; config_block_end",
}

# Feed used for a move before any F word: slicers always set one, hand-written files may not.
DEFAULT_FEED_MM_MIN = 1500.0


@dataclass(frozen=True)
class Extents:
    min_x: float
    min_y: float
    min_z: float
    max_x: float
    max_y: float
    max_z: float


@dataclass(frozen=True)
class GcodeInfo:
    """Everything pre-flight, dispatch and the estimate need from one file."""

    lines: int  # physical lines, so that "resume from line n" means line n of the file
    slicer: str | None = None
    filament_types: tuple[str, ...] = ()
    nozzle_diameters: tuple[float, ...] = ()
    bed_size: tuple[float, float] | None = None  # the bed it was sliced for (X, Y), mm
    max_height: float | None = None
    extents: Extents | None = None  # of the moves, in absolute machine coordinates
    slicer_time_s: float | None = None
    moves_time_s: float = 0.0
    # False: the slicer that wrote it always ends with a marker this file lacks.
    complete: bool | None = None
    # The slicer's `filament used [g]` (all extruders): what the print takes off a spool.
    filament_g: float | None = None

    @property
    def estimated_s(self) -> float:
        return self.slicer_time_s if self.slicer_time_s is not None else self.moves_time_s

    @property
    def filament_type(self) -> str | None:
        return self.filament_types[0] if self.filament_types else None

    @property
    def nozzle_diameter(self) -> float | None:
        return self.nozzle_diameters[0] if self.nozzle_diameters else None

    def requirements(self) -> dict[str, str]:
        """The setup this file needs, in the keys device setups use."""
        out: dict[str, str] = {}
        if self.filament_type:
            out["material"] = self.filament_type
        if self.nozzle_diameter is not None:
            out["nozzle"] = format_number(self.nozzle_diameter)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "slicer": self.slicer,
            "filament_types": list(self.filament_types),
            "nozzle_diameters": list(self.nozzle_diameters),
            "bed_size": list(self.bed_size) if self.bed_size else None,
            "max_height": self.max_height,
            "extents": None if self.extents is None else list(vars(self.extents).values()),
            "slicer_time_s": self.slicer_time_s,
            "moves_time_s": self.moves_time_s,
            "complete": self.complete,
            "filament_g": self.filament_g,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> GcodeInfo:
        ext = d.get("extents")
        bed = d.get("bed_size")
        return cls(
            lines=int(d["lines"]),  # type: ignore[call-overload]
            slicer=d.get("slicer"),  # type: ignore[arg-type]
            filament_types=tuple(d.get("filament_types") or ()),  # type: ignore[arg-type]
            nozzle_diameters=tuple(d.get("nozzle_diameters") or ()),  # type: ignore[arg-type]
            bed_size=None if not bed else (float(bed[0]), float(bed[1])),  # type: ignore[index]
            max_height=d.get("max_height"),  # type: ignore[arg-type]
            extents=None if not ext else Extents(*ext),  # type: ignore[misc]
            slicer_time_s=d.get("slicer_time_s"),  # type: ignore[arg-type]
            moves_time_s=float(d.get("moves_time_s") or 0.0),  # type: ignore[arg-type]
            complete=d.get("complete"),  # type: ignore[arg-type]
            filament_g=d.get("filament_g"),  # type: ignore[arg-type]
        )


_END_SET = frozenset(END_MARKERS.values())


def format_number(value: float) -> str:
    """0.4 → "0.4", 1.0 → "1": how a number is written in a setup."""
    return f"{value:g}"


def parse_duration(text: str) -> float | None:
    """'1d 2h 3m 4s' / '2h 5m' / '45s' → seconds; None when nothing matches."""
    parts = _DURATION_PART.findall(text)
    if not parts:
        return None
    scale = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * scale[u.lower()] for n, u in parts)


def _floats(value: str) -> tuple[float, ...]:
    out = []
    for part in re.split(r"[,;]", value):
        try:
            out.append(float(part.strip()))
        except ValueError:
            continue
    return tuple(out)


def _bed_from_shape(value: str) -> tuple[float, float] | None:
    """PrusaSlicer `bed_shape` / Orca `printable_area`: '0x0,250x0,250x210,0x210'."""
    xs, ys = [], []
    for point in value.split(","):
        try:
            x, y = point.strip().split("x")
            xs.append(float(x))
            ys.append(float(y))
        except ValueError:
            return None
    if not xs:
        return None
    return (max(xs) - min(xs), max(ys) - min(ys))


@dataclass
class _Scan:
    kv: dict[str, str] = field(default_factory=dict)
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    absolute: bool = True
    inch: bool = False
    feed: float = DEFAULT_FEED_MM_MIN
    seconds: float = 0.0
    comments: set[str] = field(default_factory=set)  # end markers seen
    lo: list[float] = field(default_factory=lambda: [math.inf] * 3)
    hi: list[float] = field(default_factory=lambda: [-math.inf] * 3)
    moved: bool = False

    def code(self, line: str) -> None:
        words = dict(_WORD.findall(line.upper()))
        g = words.get("G")
        if g is None:
            return
        try:
            gnum = float(g)
        except ValueError:
            return
        if gnum == 90:
            self.absolute = True
        elif gnum == 91:
            self.absolute = False
        elif gnum == 20:
            self.inch = True
        elif gnum == 21:
            self.inch = False
        elif gnum == 4:
            ms, s = words.get("P"), words.get("S")
            if s is not None:
                self.seconds += float(s)
            elif ms is not None:
                self.seconds += float(ms) / 1000.0
        elif gnum == 92:
            # Redefining position: the later moves are relative to it; extents stay in
            # the new frame, which is what slicers use (G92 E0 is the common case).
            for axis in "XYZ":
                if axis in words:
                    setattr(self, axis.lower(), float(words[axis]))
        elif gnum in (0, 1, 2, 3):
            self.move(words, rapid=gnum == 0)

    def move(self, words: dict[str, str], rapid: bool) -> None:
        unit = 25.4 if self.inch else 1.0
        if "F" in words:
            f = float(words["F"]) * unit
            if f > 0:
                self.feed = f
        start = (self.x, self.y, self.z)
        pos = list(start)
        any_axis = False
        for i, axis in enumerate("XYZ"):
            if axis in words:
                any_axis = True
                v = float(words[axis]) * unit
                pos[i] = v if self.absolute else pos[i] + v
        if not any_axis:
            return
        self.x, self.y, self.z = pos
        dist = math.dist(start, pos)
        if "E" in words and dist == 0:
            return
        self.seconds += dist / self.feed * 60.0
        self.moved = True
        for i in range(3):
            self.lo[i] = min(self.lo[i], pos[i])
            self.hi[i] = max(self.hi[i], pos[i])


def scan_lines(lines: Iterable[str]) -> GcodeInfo:
    s = _Scan()
    count = 0
    for raw in lines:
        count += 1
        line = raw.strip()
        if not line:
            continue
        if line.startswith(";"):
            low = line.lower()
            if low in _END_SET:
                s.comments.add(low)
            m = _PRUSA_KV.match(line)
            if m:
                s.kv.setdefault(m.group(1).strip().lower(), m.group(2))
                continue
            m = _CURA_KV.match(line)
            if m:
                s.kv.setdefault(m.group(1).lower(), m.group(2))
            elif line.lower().startswith(("; generated by", ";generated with")):
                s.kv.setdefault("generator", line.lstrip("; ").split(" ", 2)[-1])
            else:
                # "; model printing time: 1h 2m; total estimated time: 1h 5m" (Orca)
                for part in line[1:].split(";"):
                    key, sep, value = part.partition(":")
                    if sep and key.strip():
                        s.kv.setdefault(key.strip().lower(), value.strip())
            continue
        code = line.split(";", 1)[0]
        if code:
            s.code(code)
    return _info(s, count)


def _info(s: _Scan, count: int) -> GcodeInfo:
    kv = s.kv
    slicer = kv.get("generator") or kv.get("generator.name")
    if slicer is None and "flavor" in kv:
        slicer = "Cura"
    filaments: tuple[str, ...] = ()
    for key in ("filament_type", "filament type", "extruder_train.0.material.type"):
        if key in kv:
            names = [p.strip().split()[0] for p in re.split(r"[;,]", kv[key]) if p.strip()]
            filaments = tuple(n.upper() for n in names)
            break
    nozzles: tuple[float, ...] = ()
    for key in ("nozzle_diameter", "extruder_train.0.nozzle.diameter", "nozzle diameter"):
        if key in kv:
            nozzles = _floats(kv[key].removesuffix("mm"))
            break
    bed = None
    for key in ("bed_shape", "printable_area"):
        if key in kv:
            bed = _bed_from_shape(kv[key])
            break
    height = None
    for key in ("max_print_height", "printable_height"):
        if key in kv:
            h = _floats(kv[key])
            height = h[0] if h else None
            break
    slicer_time = None
    for key in (
        "estimated printing time (normal mode)",
        "total estimated time",
        "model printing time",
    ):
        if key in kv:
            slicer_time = parse_duration(kv[key])
            break
    if slicer_time is None:
        for key in ("time", "print.time"):
            if key in kv:
                t = _floats(kv[key])
                slicer_time = t[0] if t else None
                break
    grams = None
    for key in ("filament used [g]", "total filament used [g]"):
        if key in kv:
            g = _floats(kv[key])
            grams = round(sum(g), 3) if g else None
            break
    complete = None
    if slicer:
        name = slicer.lower()
        for key, marker in END_MARKERS.items():
            if name.startswith(key):
                complete = marker in s.comments
                break
    extents = None
    if s.moved:
        extents = Extents(s.lo[0], s.lo[1], s.lo[2], s.hi[0], s.hi[1], s.hi[2])
    return GcodeInfo(
        lines=count,
        slicer=slicer,
        filament_types=filaments,
        nozzle_diameters=nozzles,
        bed_size=bed,
        max_height=height,
        extents=extents,
        slicer_time_s=slicer_time,
        moves_time_s=round(s.seconds, 3),
        complete=complete,
        filament_g=grams,
    )


# Only the first this many bytes of a line are looked at: memory stays bounded on every
# path (pre-flight holds a program with a longer line, the hot folder rejects it).
SCAN_MAX_LINE = 1 << 16


def scan_file(path: Path) -> GcodeInfo:
    """Read a G-code file (any encoding: bytes that are not UTF-8 are replaced)."""
    with path.open("rb") as f:
        return scan_lines(clipped_lines(f, SCAN_MAX_LINE))


def cut_short(path: Path, head: int = 4096, tail: int = 65536) -> str | None:
    """Cheap check of a big file: why it looks cut short, or None. Reads only its ends."""
    with path.open("rb") as f:
        first = f.read(head).decode("utf-8", "replace").lower()
        size = f.seek(0, 2)
        f.seek(max(0, size - tail))
        last = f.read().decode("utf-8", "replace").lower()
    for key, marker in END_MARKERS.items():
        if f"generated by {key}" in first:
            if marker not in last:
                return f"it was written by {key} but lacks its last line {marker!r}"
            return None
    return None
