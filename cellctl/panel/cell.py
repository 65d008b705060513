"""The panel's link to the cell: MQTT commands, as the CLI sends them, for a verified user.

One connection (cellctl.cli.mqtt.Remote, paho on its own thread), reopened after
a failure. Commands go one at a time (the client matches replies from one
inbox), each run off the event loop. Every command carries `on_behalf_of`: the
panel's broker user needs the `frontend` permission, the named user's roles
decide (cellctl.access).

Programs up to `inline_max_bytes` travel inside `submit`; larger ones as
`put_program` chunks (the shared wire contract of docs/mqtt.md), read from the
spool file one chunk at a time, then `submit` names them `sha256:<hex>`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from cellctl.cli.mqtt import Remote, Target, target_from
from cellctl.config import CellConfig
from cellctl.errors import CellError
from cellctl.panel.config import PanelSection

log = structlog.get_logger("cellctl.panel")

RESENDS = 2  # rounds of resending what the cell says is missing
CONNECT_S = 5.0


class CellUnavailable(CellError):
    """The cell did not answer: the broker is unreachable or the daemon is not running."""


class CellRefused(CellError):
    """The cell answered `rejected`; the message is its reason."""


def panel_target(settings: CellConfig) -> Target:
    target = target_from(argparse.Namespace(host=None, port=None, cell=None), settings)
    panel = settings.panel
    if panel.mqtt_username is not None:
        password = panel.mqtt_password.reveal() if panel.mqtt_password is not None else None
        target = dataclasses.replace(target, username=panel.mqtt_username, password=password)
    return target


class CellClient:
    def __init__(self, target: Target, panel: PanelSection) -> None:
        self.target = target
        self.panel = panel
        self._remote: Remote | None = None
        self._lock = asyncio.Lock()

    @property
    def user(self) -> str | None:
        """The panel's own broker user, once connected."""
        return self._remote.user if self._remote is not None else None

    async def command(self, name: str, body: Mapping[str, Any], user: str) -> Any:
        """Send `name` for `user`; the reply's result. Raises CellRefused, CellUnavailable."""
        async with self._lock:
            reply = await asyncio.to_thread(self._send, name, {**body, "on_behalf_of": user})
        if reply.get("outcome") != "accepted":
            raise CellRefused(str(reply.get("reason") or "rejected without a reason"))
        return reply.get("result")

    def _send(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._remote is None:
                self._remote = self._open()
            return self._remote.command(name, body)
        except CellError as exc:
            self._drop()
            raise CellUnavailable(str(exc)) from None

    def _open(self) -> Remote:
        connect_s = min(CONNECT_S, self.panel.command_timeout_s)
        try:
            remote = Remote.connect(self.target, connect_s)
        except CellError:
            if not self.target.mqtt5:
                raise
            # amqtt (the demo's embedded broker) speaks 3.1.1 only, and leaves an MQTT 5
            # CONNECT that carries a user name unanswered instead of refusing its version.
            older = dataclasses.replace(self.target, mqtt5=False)
            remote = Remote.connect(older, connect_s)
            self.target = older
        remote.timeout = self.panel.command_timeout_s
        return remote

    def _drop(self) -> None:
        remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._drop)

    async def put_program(
        self, path: Path, size: int, sha256: str, name: str, user: str
    ) -> dict[str, Any]:
        """Send the spool file in chunks until the cell holds it whole; its last result."""
        chunk = self.panel.chunk_bytes
        ranges = [(start, min(start + chunk, size)) for start in range(0, size, chunk)]
        result: dict[str, Any] = {}
        for _ in range(1 + RESENDS):
            for start, end in ranges:
                result = await self._chunk(path, size, sha256, name, user, start, end)
                if result.get("complete"):
                    return result
            missing = result.get("missing") or []
            ranges = [r for s, e in _pairs(missing) for r in _split(s, e, chunk)]
            if not ranges:
                break
            log.warning("the cell misses parts of a program; resending", missing=missing)
        raise CellRefused(
            f"the cell did not complete program sha256:{sha256}: "
            f"holds {result.get('received')} of {size} bytes"
        )

    async def _chunk(
        self, path: Path, size: int, sha256: str, name: str, user: str, start: int, end: int
    ) -> dict[str, Any]:
        data = await asyncio.to_thread(_read, path, start, end)
        body = {
            "sha256": sha256,
            "size": size,
            "offset": start,
            "data": base64.b64encode(data).decode("ascii"),
            "name": name,
        }
        result = await self.command("put_program", body, user)
        if not isinstance(result, dict):
            raise CellRefused(f"put_program: the cell answered {result!r}")
        return result


def _read(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(end - start)


def _pairs(missing: Any) -> list[tuple[int, int]]:
    out = []
    for item in missing if isinstance(missing, list) else []:
        if isinstance(item, list | tuple) and len(item) == 2:
            s, e = item
            if isinstance(s, int) and isinstance(e, int) and 0 <= s < e:
                out.append((s, e))
    return out


def _split(start: int, end: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, end)) for s in range(start, end, chunk)]
