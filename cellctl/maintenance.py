"""The maintenance command: privileged lines sent to an idle device, never as a job.

A job may not write EEPROM, change steps/mm, disable endstops or write GRBL
settings (cellctl/jobs/policy.py). A technician sometimes must: calibrate
e-steps and `M500`, set `$130=` after fitting a longer rail, name a controller
with `$I=`. That goes through `maintain` instead: its own permission (the
built-in `maintenance` and `admin` roles; never open to everybody by default),
a reason that is required, a device that is idle with no step running (the
step lock is held while the lines go out, so no job starts meanwhile), and an
audit row with who, what, when and what the device answered.

The driver decides how a line is sent and what it refuses: lines that would
break its own link (Marlin `M110`, `M112`; GRBL `$C`, realtime characters) are
refused before anything is sent (`SupportsMaintenance` below).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from cellctl.errors import CellError
from cellctl.model import DeviceState
from cellctl.supervisor import DeviceRunner

# The command's schema (`Maintain`) is in cellctl/command_payloads.py with the others.
MAX_LINES = 24
MAX_LINE = 96
# A line may take long (homing `$H`, `M500` on a slow EEPROM); the whole batch has this.
TIMEOUT_S = 120.0


class MaintenanceRefused(CellError):
    """Nothing (more) was sent; the message says why and what did run."""


@runtime_checkable
class SupportsMaintenance(Protocol):
    """A driver that can send privileged lines outside a job."""

    async def maintenance(self, lines: Sequence[str]) -> list[str]:
        """Send `lines` in order; return the device's answer to each (`ok`, …).

        Raises MaintenanceRefused before sending anything for a line the driver
        cannot send safely, and after a line the device refused (naming the line
        and which lines before it ran)."""
        ...


async def carry_out(runner: DeviceRunner, device: str, lines: Sequence[str]) -> Mapping[str, Any]:
    """Send the lines while holding the device's step lock; the reply's result."""
    driver = _connected(runner, device)
    if not isinstance(driver, SupportsMaintenance):
        raise MaintenanceRefused(
            f"device {device!r}: driver {getattr(driver, 'name', '?')!r} takes no "
            "maintenance lines (Marlin and GRBL do)"
        )
    if runner.busy or runner.state != DeviceState.IDLE:
        raise MaintenanceRefused(
            f"device {device!r} is {runner.state.label}"
            f"{' with a step running' if runner.busy else ''}; maintenance needs it idle"
        )
    async with runner.step_lock:
        if runner.state != DeviceState.IDLE:  # changed while the lock was taken
            raise MaintenanceRefused(
                f"device {device!r} is {runner.state.label}; maintenance needs it idle"
            )
        answers = await _answered(driver.maintenance(list(lines)), device)
    return {
        "device": device,
        "lines": [{"line": ln, "answer": a} for ln, a in zip(lines, answers, strict=False)],
        "state": runner.state.label,
    }


@runtime_checkable
class SupportsLinesWhileWorking(Protocol):
    """A driver that can send lines in between a running job's own (a preparation
    declared `while_working`: a second tool's heater, a chamber)."""

    async def lines_while_working(self, lines: Sequence[str]) -> list[str]:
        """As `maintenance`, but the device may be running a step; the step goes on."""
        ...


async def send_while_working(runner: DeviceRunner, device: str, lines: Sequence[str]) -> None:
    """Send the lines to a device that may be running a step (its step lock is not
    taken: the step holds it)."""
    driver = _connected(runner, device)
    if not isinstance(driver, SupportsLinesWhileWorking):
        raise MaintenanceRefused(
            f"device {device!r}: driver {getattr(driver, 'name', '?')!r} takes no lines "
            "while it works (Marlin does)"
        )
    await _answered(driver.lines_while_working(list(lines)), device)


def _connected(runner: DeviceRunner, device: str) -> object:
    driver = runner.driver
    if driver is None or runner.state == DeviceState.UNAVAILABLE:
        raise MaintenanceRefused(f"device {device!r} is not connected")
    return driver


async def _answered(sending: Awaitable[list[str]], device: str) -> list[str]:
    """The device's answers to every line, or a refusal after TIMEOUT_S."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return await sending
    except TimeoutError:
        raise MaintenanceRefused(
            f"device {device!r}: no answer to all lines within {TIMEOUT_S:.0f} s"
        ) from None
