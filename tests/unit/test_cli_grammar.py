"""One grammar for every subcommand: the config the same way, `--json` everywhere, and
every error one line on stderr with the exit code the README states (0 ok, 1 a
runtime failure, 2 a usage or config mistake)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from cellctl.cli import main
from cellctl.cli.common import CONFIG_ENV, resolve_config
from cellctl.cli.main import build_parser

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"

# Every subcommand: how it takes the config, and the least arguments it parses with.
# "legacy": -c/--config, and the positional form of the last release (warned);
# "option": -c/--config only (these never took a positional config);
# None: reads no config.
GRAMMAR: dict[str, tuple[str | None, list[str]]] = {
    "run": ("legacy", []),
    "check": ("legacy", []),
    "jobs": ("legacy", []),
    "submit": ("legacy", ["part.gcode"]),
    "reprint": ("legacy", ["j1"]),
    "cancel": ("legacy", ["j1"]),
    "answer": ("legacy", ["j1", "0", "retry"]),
    "setup": ("legacy", ["p1", "material=PLA"]),
    "service": ("legacy", ["p1", "out"]),
    "backup": ("legacy", ["copy.db"]),
    "status": ("option", []),
    "ack": ("option", ["p1", "acknowledge"]),
    "estop": ("option", []),
    "devices": ("option", []),
    "pause": ("option", ["p1"]),
    "resume": ("option", ["p1"]),
    "stop": ("option", ["p1"]),
    "reset": ("option", ["p1"]),
    "maintain": ("option", ["p1", "M500", "--reason", "r"]),
    "drivers": (None, []),
    "sim": (None, ["marlin"]),
    "plan": ("option", ["--problem", "p.json"]),
    "completion": (None, ["bash"]),
    "report": ("option", []),
    "bed-clear": ("legacy", ["p1"]),
    "changeover": ("legacy", ["p1", "material=PETG"]),
    "panel": ("option", []),
    "apikey": ("option", ["list"]),
    "priority": ("option", ["j1", "5"]),
    "programs": ("option", []),
}


def subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_table_names_every_subcommand() -> None:
    assert subcommands() == set(GRAMMAR)


@pytest.mark.parametrize("name", sorted(GRAMMAR))
def test_config_and_json_are_taken_the_same_way(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    how, rest = GRAMMAR[name]
    parser = build_parser()
    args = parser.parse_args([name, *rest, "--json"])
    assert args.json is True
    if how is None:
        assert not hasattr(args, "config_needed")
        return
    args = parser.parse_args([name, "-c", "cell-a.toml", *rest])
    resolve_config(args)
    assert args.config == "cell-a.toml"
    args = parser.parse_args([name, "--config", "cell-a.toml", *rest])
    resolve_config(args)
    assert args.config == "cell-a.toml"
    # The environment, then ./cell.toml.
    monkeypatch.setenv(CONFIG_ENV, "from-env.toml")
    args = parser.parse_args([name, *rest])
    resolve_config(args)
    assert args.config == "from-env.toml"
    monkeypatch.delenv(CONFIG_ENV)
    (tmp_path / "cell.toml").write_text("")
    args = parser.parse_args([name, *rest])
    resolve_config(args)
    assert args.config == "cell.toml"
    assert capsys.readouterr().err == ""
    if how == "legacy":
        args = parser.parse_args([name, "old.toml", *rest])
        resolve_config(args)
        assert args.config == "old.toml"
        err = capsys.readouterr().err
        assert err == (
            "warning: the config as a positional argument is deprecated and goes in the "
            "next release; use -c old.toml\n"
        )


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])  # closed again: nothing listens there


def error_cases(tmp_path: Path) -> list[tuple[list[str], int, str]]:
    port = closed_port()
    broker = ["--host", "127.0.0.1", "--port", port, "--cell", "c1", "--timeout", "1"]
    nostore = tmp_path / "nostore.toml"
    nostore.write_text('[cell]\nname = "c"\nstate_dir = "st"\n')
    return [
        (["jobs"], 2, "no config: give -c FILE"),
        (["jobs", "-c", "a.toml", "b.toml"], 2, "the config given twice"),
        (["frobnicate"], 2, "invalid choice"),
        (["pause"], 2, "required: device"),
        (["maintain", "p1", "M500", *broker], 2, "--reason"),
        (["reset", *broker], 2, "which device"),
        (["reset", "p1", "--all", *broker], 2, "not both"),
        (["sim", "marlin", "--set", "bogus=1"], 2, "bogus: Extra inputs are not permitted"),
        (["sim", "no-such-sim"], 2, "no-such-sim"),
        (["completion", "fish"], 2, "invalid choice"),
        (["status", *broker], 1, f"127.0.0.1:{port}"),
        (["devices", *broker], 1, f"127.0.0.1:{port}"),
        (["estop", *broker], 1, f"127.0.0.1:{port}"),
        (["reset", "--all", *broker], 1, f"127.0.0.1:{port}"),
        (["backup", "-c", str(nostore), str(tmp_path / "b.db")], 1, "no store"),
        (["plan", "--problem", str(tmp_path / "none.json")], 2, "none.json"),
    ]


def test_each_error_is_one_line_with_its_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for argv, code, says in error_cases(tmp_path):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's own exit, through Parser.error
            rc = int(exc.code or 0)
        out, err = capsys.readouterr()
        assert rc == code, (argv, rc, err)
        assert err.count("\n") == 1 and err.strip(), (argv, err)
        assert says in err, (argv, err)
        assert "Traceback" not in err and out == "", (argv, out)


def test_a_config_mistake_is_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cell]\nname = "c"\n[devices.p1]\ndriver = "kuka"\n')
    assert main(["check", "-c", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{bad}: devices.p1.driver: unknown driver 'kuka'")
    assert lines[-1] == "config invalid: 1 problem"


def test_json_output_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["check", "-c", str(DEMO), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["cell"] == "demo" and {d["id"] for d in got["devices"]} >= {"printer-1", "mill-1"}
    assert main(["drivers", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in got["drivers"]} >= {"marlin", "grbl", "opcua", "modbus"}
    assert main(["completion", "bash", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert "cellctl" in got["script"] and "maintain" in got["script"]


def test_a_relative_config_path_with_a_store_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cellctl run -c cell.toml` in its folder, after a first run made the store: the
    start check opened the store by a relative file URI, which Python refuses."""
    import asyncio

    from cellctl.store import Store

    (tmp_path / "cell.toml").write_text('[cell]\nname = "c"\nstate_dir = "state"\n')

    async def make_store() -> None:
        async with Store(tmp_path / "state" / "cellctl.db"):
            pass

    asyncio.run(make_store())
    monkeypatch.chdir(tmp_path)
    assert main(["check", "-c", "cell.toml"]) == 0, capsys.readouterr().err
    assert main(["check"]) == 0  # ./cell.toml by default
