"""The retained `report` payload's shape (cellctl/shift_report.py builds it; schema
cellctl/schemas/payload.report.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Late(_Strict):
    jobs: int
    minutes: float
    max_minutes: float


class DeviceFigures(_Strict):
    busy_s: float  # running steps, inside the window
    steps: int  # steps done that started inside the window
    changeovers: int
    changeover_s: float
    utilisation: float  # busy_s ÷ the window


class Changeovers(_Strict):
    count: int
    minutes: float  # measured
    configured_minutes: float  # the same changes at the configured times (as FIFO's)


class FifoFigures(_Strict):
    """FIFO re-planned on the steps that ran (shift_report.recorded_problem)."""

    steps: int
    count: int
    minutes: float
    weighted_tardiness_min: float
    makespan_min: float


class ReportPayload(_Strict):
    v: Literal[1]
    cell: str
    since: float  # Unix seconds
    until: float
    jobs_done: int
    late: Late
    devices: dict[str, DeviceFigures]
    changeovers: Changeovers
    fifo: FifoFigures | None
