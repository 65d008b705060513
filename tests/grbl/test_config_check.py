"""`cellctl check` warns when GRBL would store a configured machine name differently."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cli import main

CONFIG = """
[cell]
name = "t"

[devices.mill]
driver = "grbl"
port = "/dev/null"
expected_build_info = {name!r}
"""


def check(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "cell.toml"
    path.write_text(CONFIG.format(name=name))
    assert main(["check", "-c", str(path)]) == 0
    return capsys.readouterr().err


def test_a_name_grbl_would_change_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = check(tmp_path, "mill 1", capsys)
    assert "warning:" in err and "devices.mill.expected_build_info" in err
    assert "'MILL1'" in err and "upper-cased" in err and "spaces" in err


def test_a_name_grbl_keeps_is_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path, "MILL-1", capsys) == ""


def test_a_name_too_long_for_grbl_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = check(tmp_path, "M" * 80, capsys)
    assert "cannot be stored" in err and "79-character line" in err


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("G0 Z\u00e9", "ASCII only"),
        ("G0 Z5 ; ok?", None),  # a `?` inside a comment never leaves the host
        ("G4 P1 !", "realtime"),
        ("G1 X" + "1" * 80, "at most 79"),
    ],
)
def test_macro_lines_grbl_would_mangle_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, why: str | None
) -> None:
    path = tmp_path / "cell.toml"
    path.write_text(CONFIG.format(name="MILL-1") + f"tool_change_macro = [{line!r}]\n")
    code = main(["check", "-c", str(path)])
    err = capsys.readouterr().err
    if why is None:
        assert code == 0, err
    else:
        assert code == 2 and "devices.mill.tool_change_macro" in err and why in err, err
