"""Checks that run before a step moves anything; a failure holds the step with its reason.

1. The program is in the store and still has its recorded hash.
2. A G-code file's slicer metadata agrees with the device: filament type and
   nozzle diameter with the loaded setup (`material`, `nozzle`), the bed it was
   sliced for and the extents of its moves with the build volume from config.
3. A G-code program breaks none of the job-content rules of the device's firmware
   (cellctl.jobs.policy: no `M85`, no `$130=` … as its driver would send it).
4. The device checks the program itself when its driver can (GRBL's `$C`
   check mode, through `cellctl.driver.SupportsPreflight`), unless the
   device's `program_check = false`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from cellctl.config import DeviceConfig
from cellctl.driver import Driver, SupportsPreflight
from cellctl.errors import CellError, LinkError, StepFailed
from cellctl.jobs.dispatch import unmet
from cellctl.jobs.gcode import GcodeInfo, format_number
from cellctl.jobs.policy import Policy, policy_for, scan_program
from cellctl.jobs.programs import ProgramMissing, ProgramStore
from cellctl.jobs.records import StepRecord
from cellctl.model import Step

# Slicers round sizes; a bed sliced 0.5 mm larger than the machine is the same bed.
TOLERANCE_MM = 0.5


class PreflightFailed(CellError):
    """A pre-flight check failed; the message names the requirement."""


def check_gcode(
    info: GcodeInfo,
    device_id: str,
    loaded: Mapping[str, str],
    build_volume: tuple[float, float, float] | None,
) -> list[str]:
    """Every way the file disagrees with the device, one line each (empty: agrees)."""
    problems = []
    wanted: dict[str, str] = {}
    if info.filament_types:
        distinct = sorted({t.upper() for t in info.filament_types})
        if len(distinct) > 1:
            problems.append(
                f"material: the program uses {'+'.join(distinct)}; "
                f"device {device_id} has one material loaded"
            )
        else:
            wanted["material"] = distinct[0]
    if info.nozzle_diameter is not None:
        wanted["nozzle"] = format_number(info.nozzle_diameter)
    for miss in unmet(loaded, wanted):
        key = miss.split(":", 1)[0]
        problems.append(
            f"{key}: the program was sliced for {wanted[key]}, "
            f"device {device_id} has {loaded.get(key, 'nothing')} loaded"
        )
    if build_volume is not None:
        bx, by, bz = build_volume
        vol = f"{bx:g} x {by:g} x {bz:g} mm"
        if info.bed_size is not None:
            sx, sy = info.bed_size
            if sx > bx + TOLERANCE_MM or sy > by + TOLERANCE_MM:
                problems.append(
                    f"bed size: the program was sliced for a {sx:g} x {sy:g} mm bed, "
                    f"device {device_id} has a build volume of {vol}"
                )
        if info.max_height is not None and info.max_height > bz + TOLERANCE_MM:
            problems.append(
                f"height: the program was sliced for {info.max_height:g} mm of height, "
                f"device {device_id} has a build volume of {vol}"
            )
        e = info.extents
        if e is not None:
            over = [
                f"{axis} up to {top:g} mm"
                for axis, top, limit in (("X", e.max_x, bx), ("Y", e.max_y, by), ("Z", e.max_z, bz))
                if top > limit + TOLERANCE_MM
            ]
            if over:
                problems.append(
                    f"build volume: the program moves {', '.join(over)}, "
                    f"device {device_id} has a build volume of {vol}"
                )
    return problems


def check_program(programs: ProgramStore, step: StepRecord) -> Path | None:
    """Blocking (hashes the file): run off the loop. Returns the stored program's path."""
    if step.program_sha256 is None:
        return None
    try:
        return programs.verify(step.program_sha256)
    except ProgramMissing as exc:
        raise PreflightFailed(f"program: {exc}") from None


def content_policy(cfg: DeviceConfig) -> Policy | None:
    """The job-content policy of a device: its firmware's rules and its own lists."""
    max_line = getattr(cfg.options, "max_line", None)  # Marlin's framing limit, when it has one
    return policy_for(
        cfg.common.driver,
        cfg.common.job_policy.allow,
        cfg.common.job_policy.deny,
        max_line if isinstance(max_line, int) else None,
    )


def check_content(path: Path, policy: Policy) -> None:
    """Blocking (reads the file): run off the loop. Names the first forbidden line."""
    try:
        violation = scan_program(path, policy)
    except OSError as exc:
        raise PreflightFailed(f"program: cannot read: {exc.strerror}") from None
    if violation is not None:
        raise PreflightFailed(f"job content: {violation}")


async def device_check(driver: Driver, step: Step, bound_s: float) -> None:
    """Ask the device itself (GRBL `$C`); LinkError passes through (not the program's fault)."""
    if not isinstance(driver, SupportsPreflight):
        return
    try:
        async with asyncio.timeout(bound_s):
            await driver.preflight(step)
    except LinkError:
        raise
    except TimeoutError:
        raise PreflightFailed(f"device check: no answer within {bound_s:g} s") from None
    except StepFailed as exc:
        raise PreflightFailed(f"device check: {exc}") from None
    except CellError as exc:
        raise PreflightFailed(f"device check: {type(exc).__name__}: {exc}") from None
