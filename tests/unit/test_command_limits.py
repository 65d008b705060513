"""Pure parts of the command path's bounds: ranges of an upload, lanes, the rate per user,
and the upload store on a real directory (bounds, expiry, a wrong hash)."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.command_limits import (
    BoundedLane,
    CommandsSection,
    Lane,
    LaneBound,
    RateLimiter,
    lane_of,
)
from cellctl.uploads import ProgramUploads, UploadRefused, add_range, held, missing


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=40))
def test_ranges_merge_like_a_set_of_bytes(chunks: list[tuple[int, int]]) -> None:
    ranges: list[list[int]] = []
    have: set[int] = set()
    for start, length in chunks:
        add_range(ranges, start, start + length)
        have |= set(range(start, start + length))
    assert held(ranges) == len(have)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    gaps = missing(ranges, 260, limit=1000)
    assert sum(e - s for s, e in gaps) == 260 - len(have & set(range(260)))


def test_lanes_refuse_past_their_bound_and_estop_has_its_own() -> None:
    lane: BoundedLane[str] = BoundedLane(LaneBound(messages=3, bytes=1024))
    assert lane.offer("big", 5000)  # one message always fits an empty lane
    assert not lane.offer("a", 1)  # … and nothing more fits beside it
    assert lane.take() == "big" and lane.held_bytes == 0
    assert all(lane.offer(x, 10) for x in "abc")
    assert not lane.offer("d", 10) and lane.refused == 2
    assert [lane.take() for _ in range(3)] == ["a", "b", "c"]
    assert lane.offer("e", 1000) and not lane.offer("f", 100)  # bytes bound too
    assert lane.take() == "e"
    assert all(lane.offer(x, 10) for x in "abc")
    assert [lane.take() for _ in range(4)] == ["a", "b", "c", None]
    assert lane_of("estop") is Lane.ESTOP
    assert {lane_of(n) for n in ("stop", "pause")} == {Lane.CONTROL}
    assert lane_of("submit") is Lane.JOBS and lane_of("jobs") is Lane.QUERIES


def test_rate_per_user_with_burst() -> None:
    rate = RateLimiter(rate_per_s=2.0, burst=3, max_users=2)
    assert [rate.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.take("a", 0.0) == pytest.approx(0.5)
    assert rate.take("b", 0.0) == 0.0  # another user is not slowed
    assert rate.take("a", 0.5) == 0.0  # a token came back after 0.5 s
    rate.take("c", 1.0)
    assert len(rate._buckets) == 2  # bounded: the least recently seen went


@pytest.fixture
def uploads(tmp_path: Path) -> tuple[ProgramUploads, list[float]]:
    now = [0.0]
    limits = CommandsSection(
        upload_max_bytes=10_000,
        uploads_open_max=2,
        uploads_open_per_user=1,
        uploads_disk_max_bytes=15_000,
        upload_expiry_s=60,
    )
    return ProgramUploads(tmp_path / "programs", tmp_path / "up", limits, lambda: now[0]), now


async def test_upload_in_any_order_bounded_and_expired(
    uploads: tuple[ProgramUploads, list[float]], tmp_path: Path
) -> None:
    up, now = uploads
    data = random.Random(1).randbytes(9000)
    sha = hashlib.sha256(data).hexdigest()
    pieces = [(o, data[o : o + 1000]) for o in range(0, 9000, 1000)]
    random.Random(2).shuffle(pieces)
    for off, piece in pieces[:-1]:
        r = await up.put("alice", sha, 9000, off, piece)
        assert not r["complete"]
    assert r["received"] == 8000 and len(r["missing"]) == 1
    # Bounds: one upload per user, two at once, 15000 bytes in progress.
    other = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(UploadRefused, match="uploads_open_per_user"):
        await up.put("alice", other, 100, 0, b"x")
    with pytest.raises(UploadRefused, match="uploads_disk_max_bytes"):
        await up.put("bob", other, 7000, 0, b"x")
    with pytest.raises(UploadRefused, match="upload_max_bytes"):
        await up.put("bob", other, 20_000, 0, b"x")
    with pytest.raises(UploadRefused, match="size 9001 differs"):
        await up.put("alice", sha, 9001, 0, b"x")
    off, piece = pieces[-1]
    r = await up.put("alice", sha, 9000, off, piece)
    assert r == {"program": f"sha256:{sha}", "received": 9000, "complete": True, "missing": []}
    assert (tmp_path / "programs" / sha).read_bytes() == data
    # An upload left alone expires, and its file goes with it.
    await up.put("bob", other, 100, 0, b"y")
    now[0] = 61.0
    assert up.expire() == 1 and up.open_uploads == 0
    assert not list((tmp_path / "up").glob("*.part"))


async def test_a_wrong_hash_discards_the_upload(
    uploads: tuple[ProgramUploads, list[float]], tmp_path: Path
) -> None:
    up, _ = uploads
    wrong = hashlib.sha256(b"not this").hexdigest()
    await up.put("alice", wrong, 4, 0, b"ab")
    with pytest.raises(UploadRefused, match=r"^sha256 mismatch"):
        await up.put("alice", wrong, 4, 2, b"cd")
    assert up.open_uploads == 0 and not (tmp_path / "programs" / wrong).exists()
    assert not list((tmp_path / "up").glob("*.part"))
    empty = hashlib.sha256(b"").hexdigest()
    r = await up.put("alice", empty, 0, 0, b"")
    assert r["complete"] is True
