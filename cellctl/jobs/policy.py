"""What a job's G-code may not do, per firmware: checked at pre-flight on every path.

A job is work, not maintenance. Whatever it came by (hot folder, `cellctl
submit`, MQTT), its program is read line by line before the step moves
anything, as the device's driver would send it (comments dropped), and the
first line that breaks a rule holds the step with the line and the rule named.
The rules and why each exists are in docs/jobs.md ("What a job may not do").

A device's `job_policy.allow` lifts rules by id; `job_policy.deny` forbids more
commands (`M106`, `G29`, `$H`, `$J=`). This module imports nothing else of cellctl
but `content`: the config validates `allow` against `rule_ids` here.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cellctl.jobs.content import (
    CODE_START,
    SUSPECT_BYTES,
    LineTooLong,
    blocks,
    escaped,
    grbl_code,
    lines_matching,
    long_line,
    marlin_code,
    read_lines,
)


class Firmware(enum.StrEnum):
    MARLIN = "marlin"
    GRBL = "grbl"


@dataclass(frozen=True)
class Rule:
    id: str  # what `job_policy.allow` names
    shows: str  # how reasons and docs write the forbidden use
    why: str


MARLIN_RULES: tuple[Rule, ...] = (
    Rule(
        "M85",
        "M85",
        "changes or disarms the dead-man timer that stops the heaters when the daemon dies",
    ),
    Rule(
        "M110",
        "M110",
        "renumbers lines: the driver's numbering no longer matches and the stream stalls",
    ),
    Rule("M500", "M500", "writes settings to EEPROM"),
    Rule("M501", "M501", "reloads settings from EEPROM, replacing the running ones"),
    Rule("M502", "M502", "resets settings to the firmware's defaults"),
    Rule("M92", "M92", "changes steps per unit: every later move lands elsewhere"),
    Rule("M206", "M206", "shifts the home offsets: later jobs move outside their frame"),
    Rule("M211", "M211 S0", "switches the software endstops off"),
    Rule("M120", "M120", "switches the endstops on or off"),
    Rule("M121", "M121", "switches the endstops off"),
    Rule("M302", "M302", "changes or disables cold-extrusion protection"),
    Rule(
        "M28",
        "M28",
        "writes to SD: later lines are stored, not run, yet acknowledged (a false done)",
    ),
    Rule("M29", "M29", "ends an SD write"),
    Rule("M23", "M23", "selects an SD file to print"),
    Rule("M24", "M24", "starts an SD print the host does not stream or watch"),
    Rule("M32", "M32", "starts an SD print the host does not stream or watch"),
    Rule("M42", "M42", "writes a pin directly"),
    Rule("M112", "M112", "kills the firmware"),
    Rule("M999", "M999", "restarts the firmware after a stop"),
    Rule("M997", "M997", "starts a firmware update"),
)

GRBL_RULES: tuple[Rule, ...] = (
    Rule("$n=", "$<n>=", "writes a setting to EEPROM"),
    Rule("$I=", "$I=", "writes the build info the driver identifies the machine by"),
    Rule("$N=", "$N<n>=", "writes a startup line that runs at every reset"),
    Rule("$RST=", "$RST=", "resets settings, offsets or the whole EEPROM"),
    Rule("$C", "$C", "toggles check mode: the rest would only be checked, not cut (a false done)"),
    Rule("$X", "$X", "unlocks an alarm without homing"),
    Rule("$SLP", "$SLP", "puts the machine to sleep"),
)

RULES: dict[Firmware, tuple[Rule, ...]] = {
    Firmware.MARLIN: MARLIN_RULES,
    Firmware.GRBL: GRBL_RULES,
}

# Marlin cuts a line at MAX_CMD_SIZE - 1 = 95 characters as sent; the driver adds
# `N<n> ` and `*<checksum>`. Room kept for both: a 7-digit line number (ten million
# lines in one session) and a 3-digit checksum.
MARLIN_MAX_LINE = 95
MARLIN_FRAME = len("N9999999 ") + len("*255")
GRBL_MAX_LINE = 79  # significant characters (GRBL 1.1's 80-byte line buffer)
READ_MAX_LINE = 1 << 20  # a raw line (comments included) longer than this is refused

DENY_ENTRY = r"^(?:[GMTgmt]\d+|\$[A-Za-z0-9#$]*=?)$"

_MARLIN_CMD = re.compile(r"\s*(?:[Nn]\s*-?\d+\s*)?([A-Za-z])\s*(\d*)(?:\.\d*)?(.*)$")
_S_VALUE = re.compile(r"[Ss]\s*([-+]?(?:\d+\.?\d*|\.\d+))?")
_GRBL_WORD = re.compile(r"([A-Z])([-+]?(?:\d+\.?\d*|\.\d+))")
_GRBL_MATCH = {
    "$n=": re.compile(r"^\$\d+="),
    "$I=": re.compile(r"^\$I="),
    "$N=": re.compile(r"^\$N\d*="),
    "$RST=": re.compile(r"^\$RST="),
    "$C": re.compile(r"^\$C$"),
    "$X": re.compile(r"^\$X$"),
    "$SLP": re.compile(r"^\$SLP$"),
}


def rule_ids(driver: str) -> frozenset[str] | None:
    """The rule ids of a driver's firmware; None for a driver no policy covers."""
    try:
        return frozenset(r.id for r in RULES[Firmware(driver)])
    except ValueError:
        return None


@dataclass(frozen=True)
class Policy:
    firmware: Firmware
    rules: tuple[Rule, ...]  # in force (the defaults less `allow`)
    deny: tuple[str, ...]  # extra forbidden commands, upper case
    max_line: int  # as the firmware counts a line


def policy_for(
    driver: str, allow: Iterable[str] = (), deny: Iterable[str] = (), max_line: int | None = None
) -> Policy | None:
    """The policy for a device's driver, or None when no policy covers that driver."""
    try:
        fw = Firmware(driver)
    except ValueError:
        return None
    lifted = set(allow)
    rules = tuple(r for r in RULES[fw] if r.id not in lifted)
    default_max = MARLIN_MAX_LINE if fw == Firmware.MARLIN else GRBL_MAX_LINE
    return Policy(fw, rules, tuple(d.upper() for d in deny), max_line or default_max)


@dataclass(frozen=True)
class Violation:
    line: int  # 0: the program as a whole
    text: str  # the line, escaped, at most 80 characters
    what: str  # why, naming the rule

    def __str__(self) -> str:
        return f"line {self.line} '{self.text}': {self.what}" if self.line else self.what


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _marlin_word(code: str) -> tuple[str, str] | None:
    m = _MARLIN_CMD.match(code)
    if m is None:
        return None
    letter, digits, rest = m.group(1).upper(), m.group(2), m.group(3)
    return (letter + str(int(digits)) if digits else letter), rest.split("*", 1)[0]


def _marlin_rule(policy: Policy, word: str, rest: str) -> str | None:
    for rule in policy.rules:
        if rule.id != word:
            continue
        if rule.id == "M211":
            s = _S_VALUE.search(rest)
            value = _number(s.group(1)) if s else None
            if value is None or int(value) != 0:  # no S, or S1: report or enable
                continue
        return f"a job may not use {rule.shows}: it {rule.why} (Marlin rule {rule.id})"
    if word in policy.deny:
        return f"a job may not use {word} on this device (job_policy.deny)"
    return None


def _check_marlin(policy: Policy, text: str) -> str | None:
    # The driver's reading first; the line as is too, so that a `(` the driver keeps
    # cannot hide a command from this check.
    code = marlin_code(text)
    if not code:
        return None
    bad = next((c for c in code if not (" " <= c < "\x7f" or c == "\t")), None)
    if bad is not None:
        return f"byte \\x{ord(bad):02x} would reach the firmware"
    sent = len(code) + MARLIN_FRAME
    if sent > policy.max_line:
        return (
            f"{len(code)} characters, {sent} as sent with its line number and checksum; "
            f"Marlin takes at most {policy.max_line} (max_line) and cuts the rest"
        )
    for candidate in (code, text.split(";", 1)[0]):
        parsed = _marlin_word(candidate)
        if parsed is not None:
            why = _marlin_rule(policy, *parsed)
            if why is not None:
                return why
    return None


def _check_grbl(policy: Policy, text: str) -> str | None:
    code = grbl_code(text)
    if not code:
        return None
    bad = next((c for c in code if not (" " < c < "\x7f")), None)
    if bad is not None:
        return f"byte \\x{ord(bad):02x} would reach the firmware"
    if len(code) > policy.max_line:
        return (
            f"{len(code)} characters without blanks and comments; "
            f"GRBL takes at most {policy.max_line} (error:11)"
        )
    for rule in policy.rules:
        if _GRBL_MATCH[rule.id].match(code):
            return f"a job may not use {rule.shows}: it {rule.why} (GRBL rule {rule.id})"
    words = None
    for entry in policy.deny:
        if entry.startswith("$"):
            hit = code.startswith(entry) if entry.endswith("=") else code == entry
        else:
            if words is None:
                words = {f"{w}{float(v):g}" for w, v in _GRBL_WORD.findall(code)}
            hit = f"{entry[0]}{float(entry[1:]):g}" in words
        if hit:
            return f"a job may not use {entry} on this device (job_policy.deny)"
    return None


def check_line(policy: Policy, line: bytes) -> str | None:
    """Why this line may not run on the policy's firmware, or None."""
    text = line.decode("latin-1")
    if policy.firmware == Firmware.MARLIN:
        return _check_marlin(policy, text)
    return _check_grbl(policy, text)


def _numbers(words: Iterable[str], letter: str) -> list[bytes]:
    return [w[1:].encode() for w in words if w[:1] == letter and w[1:].isdigit()]


@functools.lru_cache(maxsize=64)
def _suspects(policy: Policy) -> re.Pattern[bytes] | None:
    """A pattern that matches at least every line the policy could refuse (more is fine:
    those are checked closely), or None when every line must be checked."""
    parts = [SUSPECT_BYTES]
    if policy.firmware == Firmware.MARLIN:
        parts.append(long_line(policy.max_line - MARLIN_FRAME))
        words = [r.id for r in policy.rules] + list(policy.deny)
        for letter in "GMT":
            nums = [n for n in _numbers(words, letter) if n]
            if nums:
                case = letter.encode() + letter.lower().encode()
                parts.append(rb"[%s]\s*0*(?:%s)(?!\d)" % (case, b"|".join(nums)))
    else:
        if any(not d.startswith("$") for d in policy.deny):
            return None  # G/M words may be spread over a line with blanks: read them all
        parts.append(long_line(policy.max_line))
        parts.append(rb"\$")
    return re.compile(b"|".join(parts), re.MULTILINE)


def _each_line(f: BinaryIO, policy: Policy) -> Violation | None:
    for n, line in enumerate(read_lines(f, READ_MAX_LINE), start=1):
        why = check_line(policy, line)
        if why is not None:
            return Violation(n, escaped(line), why)
    return None


def _has_command(f: BinaryIO, policy: Policy) -> bool:
    code = marlin_code if policy.firmware == Firmware.MARLIN else grbl_code
    for _, block in blocks(f, READ_MAX_LINE):
        if CODE_START.search(block):
            return True
        if b"(" in block:  # `(note) G28`: look closer
            lines = block.decode("latin-1").splitlines()
            if any(code(line) for line in lines):
                return True
    return False


@functools.lru_cache(maxsize=64)
def _scan(path: str, size: int, mtime_ns: int, policy: Policy) -> Violation | None:
    del size, mtime_ns  # part of the cache key only
    suspects = _suspects(policy)
    try:
        with open(path, "rb") as f:
            if suspects is None:
                found = _each_line(f, policy)
            else:
                found = None
                for first, block in blocks(f, READ_MAX_LINE):
                    for n, line in lines_matching(block, first, suspects, READ_MAX_LINE):
                        why = check_line(policy, line)
                        if why is not None:
                            found = Violation(n, escaped(line), why)
                            break
                    if found is not None:
                        break
            if found is not None:
                return found
            f.seek(0)
            if not _has_command(f, policy):
                return Violation(
                    0, "", "no G-code command in the program: it would be done having done nothing"
                )
    except LineTooLong as exc:
        return Violation(exc.line, "...", f"longer than {READ_MAX_LINE} bytes")
    return None


def scan_program(path: Path, policy: Policy) -> Violation | None:
    """The first line of the file the policy forbids, or None. Blocking: run off the loop."""
    st = path.stat()
    return _scan(str(path), st.st_size, st.st_mtime_ns, policy)
