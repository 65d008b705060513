"""Answers are decoded while the poll awaits its next answer, and none is lost."""

from __future__ import annotations

import asyncio

from cellctl_drivers.modbus.overlap import Overlap


def _decode(job: str, words: list[int]) -> dict[str, int | float | bool | str]:
    return {f"{job}.{i}": w for i, w in enumerate(words)}


async def test_decoding_happens_during_the_next_wait() -> None:
    decoded: list[str] = []

    def decode(job: str, words: list[int]) -> dict[str, int | float | bool | str]:
        decoded.append(job)
        return _decode(job, words)

    later = Overlap(decode)
    later.add("a", [1, 2])
    assert decoded == []  # not yet: the caller goes on to send its next request
    await asyncio.sleep(0)  # the wait for the next answer
    assert decoded == ["a"]
    later.add("b", [3])
    later.add("c", [4])
    assert later.drain() == {"a.0": 1, "a.1": 2, "b.0": 3, "c.0": 4}
    assert decoded == ["a", "b", "c"]
    await asyncio.sleep(0)  # the turn scheduled for b finds nothing left
    assert decoded == ["a", "b", "c"]


async def test_drain_without_a_wait_decodes_everything_once() -> None:
    later = Overlap(_decode)
    for job in "xyz":
        later.add(job, [ord(job)])
    assert later.drain() == {"x.0": 120, "y.0": 121, "z.0": 122}
    assert later.drain() == {"x.0": 120, "y.0": 121, "z.0": 122}
