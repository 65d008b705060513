"""What keeps load from clogging the command path: a payload cap, lanes, a rate per user.

Every command message is judged on arrival, before it is parsed or queued:
too large, or from a user over their rate, and it is refused with a reply at
once, holding no memory. Otherwise it joins the queue of its lane. Each lane
has its own worker and its own bound (messages and bytes), so an emergency
stop, a stop or a pause never waits behind a submit, an upload or a query,
and a full lane refuses ("busy") instead of growing.

Memory bound: queued payloads are at most the sum of the lanes' `bytes`
(`[commands]`, default 1 + 1 + 16 + 16 + 1 MiB = 35 MiB), and each lane's
worker holds one message being handled, at most `payload_max_bytes` (4 MiB)
plus its parse (a few times that). docs/mqtt.md has the figures measured.

Pure: no I/O, no asyncio, importable by the config parser.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20


class Lane(enum.StrEnum):
    ESTOP = "estop"  # emergency stop alone: it waits for nothing
    CONTROL = "control"  # stop, pause, resume, reset: a device action now
    JOBS = "jobs"  # everything that changes jobs, setups, service state
    UPLOADS = "uploads"  # put_program chunks
    QUERIES = "queries"  # jobs, devices, programs (read-only)


LANE_OF: Mapping[str, Lane] = {
    "estop": Lane.ESTOP,
    "stop": Lane.CONTROL,
    "pause": Lane.CONTROL,
    "resume": Lane.CONTROL,
    "reset": Lane.CONTROL,
    "put_program": Lane.UPLOADS,
    "jobs": Lane.QUERIES,
    "devices": Lane.QUERIES,
    "programs": Lane.QUERIES,
    "set_priority": Lane.JOBS,
}


def lane_of(command: str) -> Lane:
    """Unknown command names go to the jobs lane, where their rejection waits its turn."""
    return LANE_OF.get(command, Lane.JOBS)


class LaneBound(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Messages waiting at most, and their payload bytes at most.
    messages: int = Field(ge=1, le=100_000)
    bytes: int = Field(ge=1024)


class CommandsSection(BaseModel):
    """`[commands]`: bounds of the command path (docs/mqtt.md, "Load")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A command message larger than this is refused before it is parsed. Programs
    # larger than it travel in chunks (put_program).
    payload_max_bytes: int = Field(default=4 * MIB, ge=64 * 1024, le=256 * MIB)
    # Per verified user: commands per second, sustained, and the burst allowed above
    # it. Emergency stops are never counted nor refused.
    rate_per_s: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    lanes: dict[Lane, LaneBound] = Field(default_factory=dict)
    # `jobs` without a `limit` returns this many; no page is larger than jobs_page_max.
    jobs_page: int = Field(default=100, ge=1)
    jobs_page_max: int = Field(default=1000, ge=1)
    # A submit's quantity × steps at most (each is a queued step).
    quantity_steps_max: int = Field(default=10_000, ge=1)
    # How long a state-changing command's `id` is remembered (its first reply
    # answers a replay); at least 24 h.
    id_retention_s: float = Field(default=48 * 3600.0, ge=24 * 3600.0)
    # Chunked uploads: the largest program, the partial uploads held at once (all
    # users; per user), their bytes on disk together, and how long an untouched
    # partial upload is kept.
    upload_max_bytes: int = Field(default=1024 * MIB, ge=1)
    uploads_open_max: int = Field(default=8, ge=1)
    uploads_open_per_user: int = Field(default=2, ge=1)
    uploads_disk_max_bytes: int = Field(default=4096 * MIB, ge=1)
    upload_expiry_s: float = Field(default=3600.0, gt=0)

    def bound(self, lane: Lane) -> LaneBound:
        return self.lanes.get(lane) or DEFAULT_LANES[lane]


DEFAULT_LANES: Mapping[Lane, LaneBound] = {
    Lane.ESTOP: LaneBound(messages=256, bytes=1 * MIB),
    Lane.CONTROL: LaneBound(messages=256, bytes=1 * MIB),
    Lane.JOBS: LaneBound(messages=64, bytes=16 * MIB),
    Lane.UPLOADS: LaneBound(messages=16, bytes=16 * MIB),
    Lane.QUERIES: LaneBound(messages=64, bytes=1 * MIB),
}

T = TypeVar("T")


@dataclass
class BoundedLane(Generic[T]):
    """A FIFO bounded by count and by payload bytes; `offer` refuses instead of waiting."""

    bound: LaneBound
    items: deque[tuple[T, int]] = field(default_factory=deque)
    held_bytes: int = 0
    refused: int = 0

    def offer(self, item: T, size: int) -> bool:
        # One message always fits an empty lane, whatever its size (it is under the cap).
        if self.items and (
            len(self.items) >= self.bound.messages or self.held_bytes + size > self.bound.bytes
        ):
            self.refused += 1
            return False
        self.items.append((item, size))
        self.held_bytes += size
        return True

    def take(self) -> T | None:
        if not self.items:
            return None
        item, size = self.items.popleft()
        self.held_bytes -= size
        return item

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per user. At most `max_users` buckets: the least recently used
    goes (a full bucket is what a new one would be anyway, so little is lost)."""

    def __init__(self, rate_per_s: float, burst: int, max_users: int = 10_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_users = max_users
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, user: str, now: float) -> float:
        """0.0 if `user` may send one more command now, else the seconds until they may."""
        b = self._buckets.pop(user, None)
        if b is None:
            b = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        self._buckets[user] = b
        while len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate
