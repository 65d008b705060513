"""Shared set-up for the Modbus tests: the integrator-style map in plc.toml and a simulated PLC."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cellctl_drivers.modbus.options import ModbusOptions
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions

HERE = Path(__file__).parent
BOUND = 10.0  # upper bound for any single wait in these tests


def plc_map(**changes: Any) -> dict[str, Any]:
    raw = tomllib.loads((HERE / "plc.toml").read_text())
    raw.update(changes)
    return raw


def plc_options(**changes: Any) -> ModbusOptions:
    return ModbusOptions.model_validate(plc_map(**changes))


@pytest.fixture
def options() -> ModbusOptions:
    return plc_options()


@pytest.fixture
async def sim() -> AsyncIterator[PlcSim]:
    async with PlcSim(PlcSimOptions(time_factor=10.0)) as plc:
        yield plc
