"""The job-content policy, line by line: every default rule of Marlin and GRBL, first let
through (the line would reach the firmware: the harm) and then refused by default, with
the line and the rule named; the spellings firmware accepts for the same command; the
per-device lists; the per-firmware line limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.config import parse
from cellctl.errors import ConfigError
from cellctl.jobs.policy import GRBL_RULES, MARLIN_RULES, check_line, policy_for, scan_program

MARLIN_HARM = {
    "M85": "M85 S0",
    "M110": "M110 N500",
    "M500": "M500",
    "M501": "M501",
    "M502": "M502",
    "M92": "M92 X200",
    "M206": "M206 Z-5",
    "M211": "M211 S0",
    "M120": "M120",
    "M121": "M121",
    "M302": "M302 P1",
    "M28": "M28 evil.gco",
    "M29": "M29",
    "M23": "M23 other.gco",
    "M24": "M24",
    "M32": "M32 !other.gco#",
    "M42": "M42 P13 S255",
    "M112": "M112",
    "M999": "M999",
    "M997": "M997",
}
GRBL_HARM = {
    "$n=": "$130=5000",
    "$I=": "$I=hacked-by-job",
    "$N=": "$N0=G0X100",
    "$RST=": "$RST=*",
    "$C": "$C",
    "$X": "$X",
    "$SLP": "$SLP",
}


def test_every_default_rule_has_a_case() -> None:
    assert set(MARLIN_HARM) == {r.id for r in MARLIN_RULES}
    assert set(GRBL_HARM) == {r.id for r in GRBL_RULES}


@pytest.mark.parametrize(
    ("firmware", "rule", "line"),
    [("marlin", r, line) for r, line in MARLIN_HARM.items()]
    + [("grbl", r, line) for r, line in GRBL_HARM.items()],
)
def test_each_rule_refuses_its_line(firmware: str, rule: str, line: str) -> None:
    lifted = policy_for(firmware, allow=[rule])
    assert lifted is not None
    # The harm: without the rule the line goes to the firmware as it stands.
    assert check_line(lifted, line.encode()) is None
    default = policy_for(firmware)
    assert default is not None
    why = check_line(default, line.encode())
    assert why is not None and f"rule {rule})" in why and "a job may not use" in why


@pytest.mark.parametrize(
    "line",
    [
        "m85 s0",
        "   M085 S0",
        "M85S0",
        "M 85 S0",
        "M85.0 S0",
        "N10 M85 S0*99",
        "(harmless) M85 S0",
        "M85 S0 ; keep the heaters on",
        "M211 S0.0",
        "M211 S 0",
        "M302",
    ],
)
def test_marlin_spellings_of_a_forbidden_command(line: str) -> None:
    policy = policy_for("marlin")
    assert policy is not None
    assert check_line(policy, line.encode()) is not None, line


@pytest.mark.parametrize(
    "line",
    ["; M85 S0", "(M85 S0)", "M211", "M211 S1", "M2110", "G1 X10 ; M500", "M851 Z-1", "M1100"],
)
def test_marlin_lines_that_are_not_the_command(line: str) -> None:
    policy = policy_for("marlin")
    assert policy is not None
    assert check_line(policy, line.encode()) is None, line


@pytest.mark.parametrize(
    "line", ["$ 1 3 0 = 5000", "$c", "(note)$X", "$x ; unlock", "$n1=g0x0", "$i=x", "$slp"]
)
def test_grbl_spellings_of_a_forbidden_command(line: str) -> None:
    policy = policy_for("grbl")
    assert policy is not None
    assert check_line(policy, line.encode()) is not None, line


@pytest.mark.parametrize("line", ["$$", "$I", "$N", "$H", "$G", "( $X )", "; $C", "$J=G91X1F100"])
def test_grbl_lines_that_are_not_the_command(line: str) -> None:
    policy = policy_for("grbl")
    assert policy is not None
    assert check_line(policy, line.encode()) is None, line


def test_deny_lists_forbid_more() -> None:
    marlin = policy_for("marlin", deny=["M106", "g29"])
    grbl = policy_for("grbl", deny=["M8", "$H", "$J="])
    assert marlin is not None and grbl is not None
    assert "job_policy.deny" in (check_line(marlin, b"M106 S255") or "")
    assert "job_policy.deny" in (check_line(marlin, b"G29") or "")
    assert check_line(marlin, b"M107") is None
    assert "M8" in (check_line(grbl, b"G0 X1 M08") or "")
    assert "$H" in (check_line(grbl, b"$h") or "")
    assert "$J=" in (check_line(grbl, b"$J=G91 X1 F100") or "")
    assert check_line(grbl, b"M9") is None


def test_line_limits_per_firmware() -> None:
    marlin = policy_for("marlin")
    grbl = policy_for("grbl")
    assert marlin is not None and grbl is not None
    # 95 as sent = 82 + `N9999999 ` + `*255`.
    assert check_line(marlin, ("M117 " + "a" * 77).encode()) is None
    long = check_line(marlin, ("M117 " + "a" * 78).encode())
    assert long is not None and "Marlin takes at most 95" in long
    assert check_line(marlin, b"G1 X1 ; " + b"c" * 20_000) is None  # a long comment is not sent
    assert "at most 95" in (check_line(marlin, b"G1 X" + b"1" * 20_000) or "")
    tighter = policy_for("marlin", max_line=60)
    assert tighter is not None and check_line(tighter, ("M117 " + "a" * 50).encode())
    assert check_line(grbl, b"G1 " + b"X1.0 " * 19 + b"Y") is None  # 79 without blanks
    assert "at most 79" in (check_line(grbl, b"G1 " + b"X1.0 " * 19 + b"Y1") or "")


def test_bytes_that_would_reach_the_firmware() -> None:
    marlin = policy_for("marlin")
    grbl = policy_for("grbl")
    assert marlin is not None and grbl is not None
    assert "\\x00" in (check_line(marlin, b"G1 X1\x00") or "")
    assert "\\xe9" in (check_line(marlin, b"M117 caf\xe9") or "")
    assert check_line(marlin, b"G1 X1 ; caf\xe9") is None
    assert check_line(grbl, b"G1 X1 (caf\xe9)") is None
    assert "\\xe9" in (check_line(grbl, b"G1 X1\xe9") or "")


def test_scan_names_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "job.gcode"
    path.write_bytes(b"; generated by hand\nG28\nG1 X10\nM85 S0\nM500\n")
    policy = policy_for("marlin")
    assert policy is not None
    v = scan_program(path, policy)
    assert v is not None and v.line == 4
    assert str(v).startswith("line 4 'M85 S0': a job may not use M85")
    huge = tmp_path / "huge.gcode"
    with huge.open("wb") as f:
        f.write(b"G28\n" + b"G" * ((1 << 20) + 10))
    v = scan_program(huge, policy)
    assert v is not None and v.line == 2 and "longer than" in v.what
    empty = tmp_path / "empty.gcode"
    empty.write_bytes(b"; only a comment\n\n")
    v = scan_program(empty, policy)
    assert v is not None and str(v).startswith("no G-code command in the program")


def _cell(tmp_path: Path, **device: object) -> None:
    parse(
        tmp_path / "cell.toml",
        {
            "cell": {"name": "c"},
            "devices": {"p1": {"driver": "marlin", "backend": "sim", **device}},
        },
    )


def test_config_names_a_bad_allow_or_deny_entry(tmp_path: Path) -> None:
    _cell(tmp_path, job_policy={"allow": ["M92"], "deny": ["M106", "$H"]})
    with pytest.raises(ConfigError) as err:
        _cell(tmp_path, job_policy={"allow": ["$X"]})
    assert "devices.p1" in str(err.value) and "job_policy.allow: $X not a rule" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _cell(tmp_path, job_policy={"deny": ["M85 S0"]})
    assert "devices.p1.job_policy.deny.0" in str(err.value)


AGREEMENT_LINES = [
    *MARLIN_HARM.values(),
    *GRBL_HARM.values(),
    "m85 s0",
    "M 85 S0",
    "N10 M85 S0*99",
    "(x) M85 S0",
    "; M85 S0",
    "M211 S1",
    "M1100",
    "$ 1 3 0 = 5000",
    "(note)$X",
    "( $X )",
    "$J=G91X1F100",
    "G1 X1\x00",
    "G1 X1\r",
    "M117 caf\xe9",
    "G1 X1 ; caf\xe9",
    "M117 " + "a" * 78,
    "G1 " + "X1.0 " * 19 + "Y1",
    "M106 S255",
    "G0 X1 M08",
]


@pytest.mark.parametrize("firmware", ["marlin", "grbl"])
@pytest.mark.parametrize("deny", [(), ("M106", "M8", "$J=")])
def test_whole_file_scan_agrees_with_the_line_check(
    tmp_path: Path, firmware: str, deny: tuple[str, ...]
) -> None:
    """The scan only looks closely at lines a fast pattern flags: it must flag every line
    the close look would refuse."""
    policy = policy_for(firmware, deny=deny)
    assert policy is not None
    moves = b"G1 X1 Y2 F3000\nG1 X3 Y4\n; a comment\n"
    for i, text in enumerate(AGREEMENT_LINES):
        line = text.encode("latin-1")
        path = tmp_path / f"{i}.gcode"
        path.write_bytes(moves + line + b"\r\n" + moves)
        expected = check_line(policy, line)
        found = scan_program(path, policy)
        if expected is None:
            assert found is None, (text, found)
        else:
            assert found is not None and found.line == 4 and found.what == expected, (text, found)
