"""G-code text helpers shared by the Marlin driver and its simulator (pure functions)."""

from __future__ import annotations

import re

_WORD = re.compile(r"([A-Za-z])\s*([-+]?(?:\d+\.?\d*|\.\d+))?")


def checksum(data: bytes) -> int:
    """Marlin's line checksum: XOR of every byte before `*`."""
    cs = 0
    for b in data:
        cs ^= b
    return cs


def frame(n: int, command: str) -> bytes:
    """`N<n> <command>*<checksum>\\n`."""
    body = f"N{n} {command}".encode()
    return body + b"*%d\n" % checksum(body)


def strip_comment(line: str) -> str:
    """Drop `;` comments, `(…)` comments and surrounding blanks. A `;` inside a
    quoted string (M117 "a;b" with GCODE_QUOTED_STRINGS) is rare in slicer output
    and not worth a parser here."""
    semi = line.find(";")
    if semi >= 0:
        line = line[:semi]
    if "(" in line:
        line = re.sub(r"\([^)]*\)", "", line)
    return line.strip()


def code_of(command: str) -> str:
    """The command word, upper case: `G1`, `M109`, `M862.3`, `T0`; '' if none."""
    m = re.match(r"\s*([A-Za-z])\s*(\d+(?:\.\d+)?)?", command)
    if not m:
        return ""
    return m.group(1).upper() + (m.group(2) or "")


def words(command: str) -> dict[str, float]:
    """Parameters after the command word: `G1 X10 Y-2.5 E.4` → {X: 10, Y: -2.5, E: 0.4}.
    A letter without a value maps to NaN (so `G28 X Y` shows which axes)."""
    out: dict[str, float] = {}
    first = True
    for m in _WORD.finditer(command):
        if first:
            first = False
            continue
        letter = m.group(1).upper()
        out[letter] = float(m.group(2)) if m.group(2) is not None else float("nan")
    return out
