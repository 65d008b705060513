"""A G-code file read line by line from disk (never loaded whole), comments stripped."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cellctl.errors import StepFailed

from .gcode import code_of, strip_comment, words


@dataclass
class MachineState:
    """What the file had set up before a line: the inputs of a resume preamble."""

    hotend: float = 0.0
    bed: float = 0.0
    fan: float = 0.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    e: float = 0.0
    relative: bool = False
    relative_e: bool = False

    def follow(self, command: str) -> None:
        code = code_of(command)
        if code in ("G0", "G1", "G2", "G3", "G92"):
            w = words(command)
            for axis in ("X", "Y", "Z", "E"):
                v = w.get(axis)
                if v is None or math.isnan(v):
                    continue
                rel = self.relative_e if axis == "E" else self.relative
                attr = axis.lower()
                if code != "G92" and rel:
                    setattr(self, attr, getattr(self, attr) + v)
                else:
                    setattr(self, attr, v)
        elif code in ("M104", "M109", "M140", "M190", "M106"):
            v = words(command).get("S", words(command).get("R"))
            if v is not None and not math.isnan(v):
                if code in ("M104", "M109"):
                    self.hotend = v
                elif code == "M106":
                    self.fan = v
                else:
                    self.bed = v
        elif code == "M107":
            self.fan = 0.0
        elif code == "G90":
            self.relative = self.relative_e = False
        elif code == "G91":
            self.relative = self.relative_e = True
        elif code == "M82":
            self.relative_e = False
        elif code == "M83":
            self.relative_e = True

    def placeholders(self) -> dict[str, str]:
        def f(v: float) -> str:
            return f"{v:.5f}".rstrip("0").rstrip(".")

        return {
            "hotend": f(self.hotend),
            "bed": f(self.bed),
            "fan": f(self.fan),
            "x": f(self.x),
            "y": f(self.y),
            "z": f(self.z),
            "e": f(self.e),
            "e_mode": "M83" if self.relative_e else "M82",
            "xy_mode": "G91" if self.relative else "G90",
        }


class JobFeed:
    """Yields (file line number, command, byte offset after the line), 1-based lines."""

    def __init__(self, path: Path, start_line: int = 0) -> None:
        try:
            self._f: BinaryIO | None = open(path, "rb")
            self.total = os.fstat(self._f.fileno()).st_size
        except OSError as exc:
            raise StepFailed(f"cannot read G-code file {path}: {exc}") from exc
        self.path = path
        self.line_no = 0
        self.offset = 0
        self.exhausted = False
        self.before = MachineState()
        # Skip to start_line, following the state the skipped lines set up.
        while self.line_no + 1 < start_line:
            raw = self._f.readline()
            if not raw:
                break
            self.line_no += 1
            self.offset += len(raw)
            cmd = strip_comment(raw.decode("utf-8", "replace"))
            if cmd:
                self.before.follow(cmd)

    def next(self) -> tuple[int, str, int] | None:
        f = self._f
        if f is None:
            return None
        while True:
            raw = f.readline()
            if not raw:
                self.exhausted = True
                self.close()
                return None
            self.line_no += 1
            self.offset += len(raw)
            cmd = strip_comment(raw.decode("utf-8", "replace"))
            if cmd:
                return self.line_no, cmd, self.offset

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
