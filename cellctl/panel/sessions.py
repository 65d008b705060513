"""Signed-in operators: one MQTT connection each, as the user, and the limits of signing in.

A browser user signs in with their broker user name and password; the panel
checks them the only way that counts, with a CONNECT to the broker as that
user, and keeps the connection for the session. Commands from the page go out
on it under `cmd/<user>/…`, so the cell (and the broker's ACL) sees the user's
own verified identity, not the panel's `frontend` account.

Sign-in attempts are rate-limited per source address (a sliding window), never
by locking an account: a stranger guessing passwords slows only himself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cellctl.access import valid_user
from cellctl.cli.mqtt import Remote, Target
from cellctl.errors import CellError

CONNECT_S = 5.0


class UserRemote(Remote):
    """A Remote as the signed-in user only: CELLCTL_MQTT_USERNAME (the panel's own
    override) must never replace the user's credentials."""

    def __init__(self, target: Target, timeout: float, mqtt5: bool) -> None:
        super().__init__(target, timeout, mqtt5)
        self.c.username_pw_set(target.username, target.password)
        self.user = target.username or ""
        self._connects = 0

    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        # paho reconnects a session's connection by itself; the broker forgot its
        # subscriptions then, so the next command subscribes its reply topic again.
        self._connects += 1
        if self._connects > 1:
            self._subscribed = set()
        super()._on_connect(c, u, f, rc, p)


class SignInRefused(CellError):
    """The broker refused the user's credentials, or could not be reached."""


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    remote: Remote
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLimit:
    """At most `limit` events per `window_s` per key; answers how long to wait, 0 if none."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        q = self._seen.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.limit:
            return q[0] + self.window_s - now
        q.append(now)
        if len(self._seen) > 10_000:  # a flood of sources: forget the quiet ones
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - self.window_s}
        return 0.0


class Sessions:
    """Session id → Session; idle ones expire after `idle_s`."""

    def __init__(self, target: Target, command_timeout_s: float, idle_s: float) -> None:
        self.target = target
        self.command_timeout_s = command_timeout_s
        self.idle_s = idle_s
        self._by_id: dict[str, Session] = {}

    async def sign_in(self, user: str, password: str) -> Session:
        if not valid_user(user):
            raise SignInRefused(f"{user!r} is not a broker user name")
        remote = await asyncio.to_thread(self._connect, user, password)
        sid = secrets.token_urlsafe(32)
        session = Session(sid, user, secrets.token_urlsafe(32), remote)
        self._by_id[sid] = session
        await self._expire()
        return session

    def _connect(self, user: str, password: str) -> Remote:
        target = dataclasses.replace(self.target, username=user, password=password or None)
        try:
            remote = UserRemote.connect(target, CONNECT_S)
        except CellError as exc:
            if not target.mqtt5 or "refused" in str(exc):
                raise SignInRefused(str(exc)) from None
            # amqtt (the demo's broker) leaves an MQTT 5 CONNECT with a user unanswered;
            # once 3.1.1 answered, later sign-ins start with it.
            try:
                remote = UserRemote.connect(dataclasses.replace(target, mqtt5=False), CONNECT_S)
            except CellError as again:
                raise SignInRefused(str(again)) from None
            self.target = dataclasses.replace(self.target, mqtt5=False)
        remote.timeout = self.command_timeout_s
        return remote

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.idle_s:
            return None
        session.seen = now
        return session

    async def command(
        self, session: Session, name: str, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> Any:
        """Send as the session's user; the whole reply (outcome, reason, result).

        One command at a time per session (one inbox); `timeout_s` shortens the wait for a
        query, so that a cell that is down does not hold the user's next command for long."""
        async with session.lock:
            session.remote.timeout = min(
                timeout_s or self.command_timeout_s, self.command_timeout_s
            )
            try:
                return await asyncio.to_thread(session.remote.command, name, dict(body))
            except CellError as exc:
                return {"outcome": "unavailable", "reason": str(exc), "result": None}

    async def sign_out(self, sid: str) -> None:
        session = self._by_id.pop(sid, None)
        if session is not None:
            await asyncio.to_thread(session.remote.close)

    async def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._by_id.items() if now - v.seen > self.idle_s]:
            await self.sign_out(sid)

    async def close(self) -> None:
        for sid in list(self._by_id):
            await self.sign_out(sid)
