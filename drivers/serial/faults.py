"""Fault injection on an emulated serial link, shared by every firmware simulator.

Line noise hits host→device lines (one or several bytes changed); a lost
reply drops a whole device→host line. Stalls and unplug/replug live on
`PtyHost`, since they act on the link itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FaultPlan:
    """Random faults, all off by default. `seed` makes a run repeatable."""

    corrupt_p: float = 0.0  # fraction of host→device lines hit by noise
    corrupt_bytes: int = 1  # bytes changed in a hit line (1: one byte; >1: a burst)
    drop_reply_p: float = 0.0  # fraction of device→host lines matching drop_prefix lost
    drop_prefix: bytes = b"ok"
    seed: int | None = None


@dataclass
class FaultCounters:
    lines_seen: int = 0
    lines_corrupted: int = 0
    bytes_corrupted: int = 0
    replies_dropped: int = 0


@dataclass
class Faults:
    """Applies a FaultPlan; also takes one-shot requests from tests (`drop_next_reply`)."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    counters: FaultCounters = field(default_factory=FaultCounters)
    drop_next: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)

    def drop_next_reply(self, n: int = 1) -> None:
        self.drop_next += n

    def corrupt(self, line: bytes) -> tuple[bytes, bool]:
        """Maybe damage one host→device line (ending in b'\\n'): (line, damaged?).

        Single-byte noise spares the leading `N`: firmware runs a line without
        `N` unchecked (as a plain command), so no checksum could catch that hit
        and a lossless stream could not be tested. Burst mode spares nothing but
        the line end, and the firmware counts what slips through.
        """
        self.counters.lines_seen += 1
        plan = self.plan
        if plan.corrupt_p <= 0.0 or len(line) < 3 or self._rng.random() >= plan.corrupt_p:
            return line, False
        body = bytearray(line[:-1]) if line.endswith(b"\n") else bytearray(line)
        first = 1 if plan.corrupt_bytes <= 1 and body[:1] == b"N" else 0
        positions = list(range(first, len(body)))
        if not positions:
            return line, False
        count = min(max(1, plan.corrupt_bytes), len(positions))
        for pos in self._rng.sample(positions, count):
            old = body[pos]
            new = old
            while new == old:
                new = self._rng.randrange(0x20, 0x7F)  # printable: no line ends
            body[pos] = new
        self.counters.lines_corrupted += 1
        self.counters.bytes_corrupted += count
        return bytes(body) + line[len(body) :], True

    def drops(self, line: bytes) -> bool:
        """Whether this device→host line is lost on the way."""
        if not line.startswith(self.plan.drop_prefix):
            return False
        if self.drop_next > 0:
            self.drop_next -= 1
        elif self.plan.drop_reply_p <= 0.0 or self._rng.random() >= self.plan.drop_reply_p:
            return False
        self.counters.replies_dropped += 1
        return True
