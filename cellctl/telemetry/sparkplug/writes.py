"""DCMD writes to a driver's writable tags: allowed only where the config says so.

Sparkplug topics carry no user (the broker's ACL decides who may publish DCMD), and a
tag write moves real equipment, so nothing is writable over Sparkplug unless
`[mqtt.sparkplug] write_tags` names it (`<device>/<tag>` patterns, `*` matches).
The driver must declare the metric `writable` and offer `write_tag(name, value)`
(the Modbus and OPC UA drivers do).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog

from cellctl.commands import DEVICE_TIMEOUT_S, CommandHandler
from cellctl.commands import _insert_audit as insert_audit
from cellctl.errors import CellError
from cellctl.model import MetricValue
from cellctl.store import StoreError
from cellctl.telemetry.encoding import AuditRecord
from cellctl.telemetry.sparkplug.catalog import MetricDef
from cellctl.telemetry.sparkplug.payload import DataType, Metric

log = structlog.get_logger("cellctl.sparkplug")

WRITE_COMMAND = "sparkplug_write"  # the audit's name for a DCMD tag write


@runtime_checkable
class SupportsWriteTag(Protocol):
    async def write_tag(self, name: str, value: MetricValue) -> None: ...


def allowed(patterns: Sequence[str], device: str, tag: str) -> bool:
    return any(fnmatch.fnmatchcase(f"{device}/{tag}", p) for p in patterns)


def value_for(m: Metric, datatype: DataType) -> MetricValue | None:
    """The DCMD metric's value as the tag's datatype wants it, or None if it cannot be."""
    which = m.WhichOneof("value")
    if which is None or m.is_null:
        return None
    raw = getattr(m, which)
    if datatype == DataType.BOOLEAN:
        return raw if which == "boolean_value" else None
    if datatype == DataType.STRING:
        return raw if which == "string_value" else None
    if datatype == DataType.DOUBLE:
        if which in ("double_value", "float_value", "int_value", "long_value"):
            value = float(raw)
            return value if math.isfinite(value) else None
        return None
    if which == "long_value":  # Int64: two's complement in a uint64
        return int(raw) - (1 << 64) if raw >= 1 << 63 else int(raw)
    if which == "int_value":
        return int(raw) - (1 << 32) if raw >= 1 << 31 else int(raw)
    return None


class TagWriter:
    """Checks a DCMD tag write, runs it (in a task the caller owns) and audits it."""

    def __init__(
        self,
        patterns: Sequence[str],
        user: str,
        commands: Callable[[], CommandHandler | None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._patterns = patterns
        self._user = user
        self._commands = commands
        self._spawn = spawn

    def request(
        self, device: str, name: str, m: Metric, d: MetricDef | None, driver: object
    ) -> None:
        why = ""
        value = None
        if d is None or not d.writable:
            why = "not a writable metric of this device"
        elif not allowed(self._patterns, device, name):
            why = "not in [mqtt.sparkplug] write_tags"
        elif not isinstance(driver, SupportsWriteTag):
            why = "the device is not connected, or its driver cannot write tags"
        else:
            value = value_for(m, d.datatype)
            if value is None:
                why = f"the value does not fit the tag's datatype {d.datatype.name}"
        if why or value is None or not isinstance(driver, SupportsWriteTag):
            log.warning("Sparkplug DCMD write refused", device=device, tag=name, reason=why)
            self._spawn(self._audit(device, name, None, "rejected", why))
            return
        self._spawn(self._write(driver, device, name, value))

    async def _write(
        self, driver: SupportsWriteTag, device: str, tag: str, value: MetricValue
    ) -> None:
        try:
            async with asyncio.timeout(DEVICE_TIMEOUT_S):
                await driver.write_tag(tag, value)
            outcome, why = "accepted", ""
            log.info("Sparkplug DCMD wrote a tag", device=device, tag=tag, value=value)
        except (CellError, TimeoutError) as exc:
            outcome, why = "rejected", str(exc) or "the device did not answer in time"
            log.warning("Sparkplug DCMD write failed", device=device, tag=tag, reason=why)
        await self._audit(device, tag, value, outcome, why)

    async def _audit(
        self, device: str, tag: str, value: MetricValue | None, outcome: str, why: str
    ) -> None:
        """A row in the command audit (and its MQTT audit message), as JSON commands get."""
        handler = self._commands()
        if handler is None:
            return
        # The shape of a JSON command's origin (cellctl/schemas/payload.audit.json).
        origin = {
            "user": self._user,
            "verified": False,
            "client_id": None,
            "user_properties": {"via": "sparkplug"},
            "response_topic": None,
        }
        rec = AuditRecord(WRITE_COMMAND, None, origin, outcome, why)
        body = json.dumps({"device": device, "tag": tag, "value": value}).encode()
        try:
            await handler.store.call(lambda conn: insert_audit(conn, rec, body))
        except StoreError as exc:
            log.error("Sparkplug write: its audit row could not be written", error=str(exc))
        handler.audit(rec)
