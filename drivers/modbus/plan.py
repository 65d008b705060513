"""Read planning: which requests read a set of tags in as few requests as the device allows.

Tags of one table are sorted by address and swept once. A request grows to
take the next tag while the unmapped addresses between them stay within
`max_gap` and the whole span within `max_count`; otherwise a new request
starts. Greedy is optimal here: by exchange, the i-th greedy request always
ends at or beyond the i-th request of any valid plan, so no plan needs fewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .options import Table


@dataclass(frozen=True, slots=True)
class Span:
    """What one tag occupies: [address, address + size) in `table`."""

    name: str
    table: Table
    address: int
    size: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class Read:
    """One request: `count` addresses from `address` in `table`, serving `spans`."""

    table: Table
    address: int
    count: int
    spans: tuple[Span, ...]

    def describe(self) -> str:
        last = self.address + self.count - 1
        names = ", ".join(f"{s.name}@{s.address}" for s in self.spans)
        return f"{self.table} {self.address}..{last} (tags {names})"


def plan_table(spans: Sequence[Span], max_gap: int, max_count: int) -> list[Read]:
    """Requests for spans of one table. Spans may overlap (bits of one status word)."""
    ordered = sorted(spans, key=lambda s: (s.address, s.end))
    reads: list[Read] = []
    start = end = -1
    members: list[Span] = []
    for span in ordered:
        if span.size > max_count:
            raise ValueError(
                f"tag {span.name!r} ({span.size}) is larger than one read ({max_count})"
            )
        if members and span.address - end <= max_gap and max(end, span.end) - start <= max_count:
            end = max(end, span.end)
            members.append(span)
            continue
        if members:
            reads.append(Read(members[0].table, start, end - start, tuple(members)))
        start, end, members = span.address, span.end, [span]
    if members:
        reads.append(Read(members[0].table, start, end - start, tuple(members)))
    return reads


def plan(
    spans: Iterable[Span], max_gap: int, max_count: int, max_bits_gap: int, max_bits_count: int
) -> list[Read]:
    by_table: dict[Table, list[Span]] = {}
    for s in spans:
        by_table.setdefault(s.table, []).append(s)
    reads: list[Read] = []
    for table in Table:
        members = by_table.get(table)
        if not members:
            continue
        if table.is_bits:
            reads += plan_table(members, max_bits_gap, max_bits_count)
        else:
            reads += plan_table(members, max_gap, max_count)
    return reads
