"""What a Marlin `Error:` line says about the line protocol (pure functions).

Marlin's queue.cpp checks a numbered line's number before its checksum, so a
line that arrives out of sequence (an echo of the lines in flight behind a
bad one) always reports the line-number error, and only the line the
firmware asked for can report a checksum error. Wordings, with their sources:

- line number: Marlin `Line Number is not Last Line Number+1, Last Line: n`
  (language.h, 1.x to 2.1); OctoPrint's virtual printer `expected line n+1 got m`.
- checksum (the line itself): Marlin `checksum mismatch, Last Line: n` and
  `No Checksum with line number, Last Line: n`; emulations `Checksum mismatch`,
  `Wrong checksum`, `Missing checksum`.
- format (the line itself): `No Line Number with checksum, Last Line: n`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class LineErrorKind(Enum):
    LINE_NUMBER = "line number"  # out of sequence: an echo, or a counter the host cannot match
    CHECKSUM = "checksum"  # the line itself arrived damaged or without its checksum
    FORMAT = "format"  # the line itself is malformed (a checksum without a number)


@dataclass(frozen=True)
class LineError:
    kind: LineErrorKind
    last_line: int | None  # the firmware's last accepted N, when the text says it
    text: str


_LAST = re.compile(r"last\s*line\s*:?\s*(-?\d+)", re.IGNORECASE)
_EXPECTED = re.compile(r"expected\s+line\s*:?\s*(-?\d+)", re.IGNORECASE)


def classify(text: str) -> LineError | None:
    """The line-protocol error in `text` (without `Error:`), or None for any other error."""
    low = text.lower()
    if "line number is not last line number" in low or "expected line" in low:
        kind = LineErrorKind.LINE_NUMBER
    elif "no line number" in low:
        kind = LineErrorKind.FORMAT
    elif "checksum" in low:
        kind = LineErrorKind.CHECKSUM
    else:
        return None
    last: int | None = None
    m = _LAST.search(text)
    if m is not None:
        last = int(m.group(1))
    else:
        m = _EXPECTED.search(text)
        if m is not None:
            last = int(m.group(1)) - 1
    return LineError(kind, last, text)
