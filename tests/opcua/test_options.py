"""The opcua config section: mistakes are start-up errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cellctl_drivers.opcua.simconfig import sim_robot_table

from cellctl import startcheck
from cellctl.config import load, parse
from cellctl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _cell(table: dict[str, Any]) -> dict[str, Any]:
    return {"cell": {"name": "t"}, "devices": {"arm": {"driver": "opcua", **table}}}


def _problems(table: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(Path("cell.toml"), _cell(table))
    return "\n".join(info.value.problems)


def test_the_sim_table_is_valid() -> None:
    cell = parse(Path("cell.toml"), _cell({"backend": "sim", **sim_robot_table()}))
    assert cell.devices["arm"].driver == "opcua"


def test_a_namespace_index_is_refused() -> None:
    table = sim_robot_table()
    table["tags"]["state"] = {"node": "ns=2;s=Robot.State", "type": "string"}
    msg = _problems(table)
    assert "devices.arm.tags.state" in msg
    assert "namespace by URI" in msg


def test_a_role_naming_an_unknown_tag_is_refused() -> None:
    table = sim_robot_table()
    table["program"]["done_tag"] = "finished"
    assert "program.done_tag: 'finished' is not in tags" in _problems(table)


def test_security_needs_certificate_and_key() -> None:
    msg = _problems(
        sim_robot_table(security_policy="Basic256Sha256", security_mode="SignAndEncrypt")
    )
    assert "Basic256Sha256 needs certificate and private_key" in msg


def test_password_comes_from_env_or_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_OPCUA_PASSWORD", raising=False)
    table = sim_robot_table(username="u", password={"env": "NO_SUCH_OPCUA_PASSWORD"})
    cell = parse(Path("cell.toml"), _cell({"backend": "sim", **table}))  # read when used
    found = {p.key: p.message for p in startcheck.problems(cell)}  # what check and run say
    assert found == {
        "devices.arm.password": "environment variable NO_SUCH_OPCUA_PASSWORD is not set"
    }
    monkeypatch.setenv("NO_SUCH_OPCUA_PASSWORD", "pw")
    assert startcheck.problems(cell) == []
    msg = _problems(sim_robot_table(username="u", password="plain"))
    assert "devices.arm.password" in msg


def test_handshake_needs_its_tags() -> None:
    table = sim_robot_table()
    del table["program"]["ack_tag"]
    assert "needs ack_tag" in _problems(table)


def test_demo_robot_matches_the_simulator() -> None:
    cell = load(ROOT / "configs" / "demo.toml")
    robot = cell.devices["robot1"]
    assert robot.common.backend == "sim"
    assert robot.common.processes == ("tend",)
    options: Any = robot.options
    assert options.program.start == "handshake"
    # Every tag of the demo exists in the simulator's own table.
    sim_tags = sim_robot_table()["tags"]
    for name, tag in options.tags.items():
        assert sim_tags[name]["node"] == tag.node, name
