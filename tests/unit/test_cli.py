"""The command line: exit codes and messages, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cli import main

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"


def test_check_demo_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "cell 'demo'" in out and out.rstrip().endswith("config OK")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.toml'}: file not found" in err
    assert "config invalid: 1 problem" in err


def test_run_with_invalid_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[cell]\nname = 5\n")
    assert main(["run", "-c", str(bad)]) == 2
    assert f"{bad}: cell.name: expected a string, got 5" in capsys.readouterr().err


def test_drivers_lists_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drivers"]) == 0
    assert "simulators:" in capsys.readouterr().out


def test_sim_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "no-such-sim"]) == 2
    assert "unknown simulator 'no-such-sim'" in capsys.readouterr().err
