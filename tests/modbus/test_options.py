"""Config of the modbus driver: mistakes are start-up errors naming the key; RTU options
build the right serial client (RTU framing is not exercised against a device here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.link import Link
from cellctl_drivers.modbus.options import ModbusOptions
from pydantic import ValidationError
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from cellctl.config import parse
from cellctl.driver import DriverContext
from cellctl.errors import ConfigError
from cellctl.model import MetricType

from .conftest import plc_map, plc_options

TAG = {"table": "holding", "address": 5}


def _problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        ModbusOptions.model_validate(raw)
    return str(err.value)


@pytest.mark.parametrize(
    "tag,message",
    [
        ({"table": "coil", "address": 1, "type": "int16"}, "type must be bool"),
        ({"table": "input", "address": 1, "writable": True}, "read-only in Modbus"),
        ({"table": "holding", "address": 1, "type": "string"}, "needs length"),
        ({"table": "holding", "address": 1, "length": 4}, "length applies to string"),
        ({"table": "holding", "address": 65535, "type": "float32"}, "past address 65535"),
        ({"table": "holding", "address": 1, "type": "bool", "scale": 2}, "do not apply"),
        ({"table": "holding", "address": 1, "colour": "red"}, "Extra inputs"),
        ({"table": "holding", "address": 1, "type": "int128"}, "int16"),
        ({"table": "holding", "address": -1}, "greater than or equal"),
    ],
)
def test_bad_tags_are_refused(tag: dict[str, Any], message: str) -> None:
    assert message in _problems({"tags": {"x": tag}})


def test_references_to_missing_or_read_only_tags_are_refused() -> None:
    text = _problems(
        {
            "tags": {"state": TAG, "go": {"table": "coil", "address": 0}},
            "recipe": {"request": "go", "ack": "nope", "done": "state", "error": "state"},
            "heartbeat": {"tag": "state"},
            "commands": {"stop": [{"tag": "ghost"}]},
            "status": {"estop": "missing"},
        }
    )
    assert "recipe.request: tag 'go' must be writable" in text
    assert "recipe.ack: no tag named 'nope'" in text
    assert "heartbeat.tag: tag 'state' must be writable" in text
    assert "commands.stop[0].tag: no tag named 'ghost'" in text
    assert "status.estop: no tag named 'missing'" in text


def test_limits_and_groups() -> None:
    assert "less than or equal to 125" in _problems({"tags": {"a": TAG}, "max_count": 126})
    assert "less than or equal to 2000" in _problems({"tags": {"a": TAG}, "max_bits_count": 2001})
    big = {"table": "holding", "address": 0, "type": "string", "length": 100}
    assert "exceed max_count 20" in _problems({"tags": {"a": big}, "max_count": 20})
    assert "no polling group 'fast'" in _problems({"tags": {"a": {**TAG, "group": "fast"}}})
    assert "needs a [serial] table" in _problems({"tags": {"a": TAG}, "transport": "rtu"})


def test_the_cell_config_names_the_device_and_key() -> None:
    raw = {
        "cell": {"name": "c"},
        "devices": {"plc": {"driver": "modbus", **plc_map(), "timeout_s": -1}},
    }
    with pytest.raises(ConfigError) as err:
        parse(Path("cell.toml"), raw)
    assert "devices.plc.timeout_s" in str(err.value)


def test_metrics_follow_the_map() -> None:
    specs = {s.name: s for s in ModbusDriver(DriverContext("x"), plc_options()).metrics()}
    assert (
        specs["conveyor_speed"].type == MetricType.FLOAT and specs["conveyor_speed"].unit == "mm/s"
    )
    assert specs["conveyor_speed"].writable
    assert specs["parts_good"].type == MetricType.INT and not specs["parts_good"].writable
    assert specs["temperature"].type == MetricType.FLOAT  # scaled int16
    assert specs["recipe_name"].type == MetricType.STRING
    assert specs["part_present"].type == MetricType.BOOL


async def test_tcp_client_from_options_and_endpoint() -> None:
    link = Link(plc_options(timeout_s=0.7), "10.1.2.3:1502")
    client = link.make_client()
    assert isinstance(client, AsyncModbusTcpClient)
    assert (client.comm_params.host, client.comm_params.port) == ("10.1.2.3", 1502)
    assert client.comm_params.timeout_connect == 0.7
    assert link.where == "10.1.2.3:1502 unit 1"


async def test_rtu_client_from_options() -> None:
    options = plc_options(
        transport="rtu",
        unit_id=17,
        serial={"port": "/dev/ttyUSB3", "baudrate": 38400, "parity": "N", "stopbits": 2},
    )
    link = Link(options)
    client = link.make_client()
    assert isinstance(client, AsyncModbusSerialClient)
    params = client.comm_params
    assert params.host == "/dev/ttyUSB3"
    assert (params.baudrate, params.parity, params.stopbits, params.bytesize) == (38400, "N", 2, 8)
    assert type(client.ctx.framer).__name__ == "FramerRTU"
    assert FramerType.RTU.value == "rtu"
    assert link.where == "/dev/ttyUSB3 unit 17"
