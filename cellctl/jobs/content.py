"""The bytes of a G-code file, read with a bound and shown safely.

Shared by the hot folder (global limits on every dropped file) and pre-flight
(per-firmware checks on every program, whatever path it came by). Reading is
bounded: a line longer than the limit is an error, never a 100 MB string.
Anything shown to an operator (a reason, a log line, an `.error` file) goes
through `escaped`: printable ASCII as is, every other byte as `\\xNN`, at most
80 characters (the last three `...` when cut).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

SHOW_MAX = 80
_PAREN = re.compile(r"\([^)]*\)")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DRIVER_COMMENT = re.compile(r"\([^)]*\)|;.*$")  # what drivers/grbl's clean_line drops


def escaped(data: bytes | str, limit: int = SHOW_MAX) -> str:
    """`data` safe to print: printable ASCII kept, anything else `\\xNN`; ≤ `limit` chars."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    out: list[str] = []
    size = 0
    for b in data:
        piece = chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}"
        if size + len(piece) > limit - 3:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


class LineTooLong(Exception):
    def __init__(self, line: int, head: bytes, limit: int) -> None:
        super().__init__(f"line {line}: longer than {limit} bytes: {escaped(head)}")
        self.line = line
        self.head = head


BLOCK = 1 << 20
# A line that starts with something other than a comment or a blank holds a command
# (a line starting with `(` may too: callers look closer when no line matches).
CODE_START = re.compile(rb"^[ \t]*[^;( \t\r\n]", re.MULTILINE)


def blocks(f: BinaryIO, max_line: int, size: int = BLOCK) -> Iterator[tuple[int, bytes]]:
    """`f` in blocks of whole lines, each with the number of its first line. At most
    `size + max_line + 2` bytes are held; a line that spans blocks and is longer than
    `max_line` raises LineTooLong (within a block, `lines_matching` finds them)."""
    line = 1
    carry = b""
    while data := f.read(size):
        data = carry + data
        cut = data.rfind(b"\n") + 1
        block, carry = data[:cut], data[cut:]
        if len(carry) > max_line + 2:
            raise LineTooLong(line + block.count(b"\n"), carry[: max_line + 2], max_line)
        if block:
            yield line, block
            line += block.count(b"\n")
    if carry:
        yield line, carry


def lines_matching(
    block: bytes, first: int, pattern: re.Pattern[bytes], max_line: int
) -> Iterator[tuple[int, bytes]]:
    """(number, line without its end) of each line of `block` that `pattern` matches;
    LineTooLong for a matched line over `max_line` (match long lines with `long_line`)."""
    counted_to, number, done_to = 0, first, -1
    for m in pattern.finditer(block):
        if m.start() <= done_to:
            continue
        start = block.rfind(b"\n", 0, m.start()) + 1
        end = block.find(b"\n", m.start())
        end = len(block) if end < 0 else end
        number += block.count(b"\n", counted_to, start)
        counted_to = start
        body = block[start:end]
        if body.endswith(b"\r"):
            body = body[:-1]
        if len(body) > max_line:
            raise LineTooLong(number, body[: max_line + 2], max_line)
        done_to = end
        yield number, body


def long_line(max_line: int) -> bytes:
    """A pattern (for `lines_matching`) that matches every line over `max_line` bytes."""
    return rb"^[^\n]{%d}" % (max_line + 1)


def raw_lines(f: BinaryIO, max_line: int) -> Iterator[tuple[bytes, bytes]]:
    """(line as read, line without its `\\n` / `\\r\\n`) for each line of `f`; raises
    LineTooLong past `max_line` bytes, having read at most `max_line + 2` of that line."""
    n = 0
    while raw := f.readline(max_line + 2):
        n += 1
        body = raw[:-1] if raw.endswith(b"\n") else raw
        if body.endswith(b"\r"):
            body = body[:-1]
        if len(body) > max_line:
            raise LineTooLong(n, raw, max_line)
        yield raw, body


def clipped_lines(f: BinaryIO, max_line: int) -> Iterator[str]:
    """Every line of `f` as text (UTF-8, bad bytes replaced), each cut to its first
    `max_line` characters: memory stays bounded whatever the file holds (a 100 MB
    "line" is read in blocks and dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    carry = ""
    while data := f.read(BLOCK):
        parts = (carry + decoder.decode(data)).split("\n")
        carry = parts.pop()[:max_line]
        for part in parts:
            yield part[:max_line]
    carry += decoder.decode(b"", final=True)
    if carry:
        yield carry


def read_lines(f: BinaryIO, max_line: int) -> Iterator[bytes]:
    """The lines of `f` without their line ends, bounded as `raw_lines`."""
    for _, body in raw_lines(f, max_line):
        yield body


def marlin_code(line: str) -> str:
    """What the Marlin driver sends of a line (drivers/marlin/gcode.strip_comment):
    cut at the first `;`, closed `(…)` removed, blanks stripped."""
    semi = line.find(";")
    if semi >= 0:
        line = line[:semi]
    return _PAREN.sub("", line).strip()


def grbl_code(line: str) -> str:
    """What GRBL executes of a line: the driver drops closed `(…)` and `;…`
    (drivers/grbl/protocol.clean_line), GRBL itself drops an unclosed `(…`, every
    blank and control character, and upper-cases letters."""
    text = _DRIVER_COMMENT.sub("", line)
    paren = text.find("(")
    if paren >= 0:
        text = text[:paren]
    kept = "".join(c for c in text if c > " " and c != "\x7f")
    return kept.translate(_UPPER)  # ASCII letters only: GRBL upper-cases nothing else


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Lines worth a close look for `byte_problem`: a control byte (a `\r` only when it does
# not end the line) or a byte above 0x7F.
SUSPECT_BYTES = rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]|\r(?!\n)"


def byte_problem(line: bytes) -> str | None:
    """Why a line's bytes cannot go to a machine, or None. Control bytes (tab aside) are
    refused anywhere; bytes above 0x7F only inside comments, where older CAM posts write
    Latin-1 and slicers UTF-8."""
    m = _CONTROL.search(line)
    if m is not None:
        return f"control byte \\x{line[m.start()]:02x} at column {m.start() + 1}"
    if line.isascii():
        return None
    text = line.decode("latin-1")
    for code in (marlin_code(text), grbl_code(text)):
        for c in code:
            if ord(c) > 0x7F:
                col = text.find(c) + 1
                return f"non-ASCII byte \\x{ord(c):02x} outside a comment at column {col}"
    return None


@dataclass(frozen=True)
class FileProblem:
    """A line-level reason a file is refused; str() is what the operator reads."""

    line: int
    what: str
    text: bytes

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}: {escaped(self.text)}"
