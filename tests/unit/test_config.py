"""Config: a good file loads; every mistake is one precise line naming file and key."""

from __future__ import annotations

import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fake import FakeDriver, FakeSim

from cellctl.app import apply_thread_switch
from cellctl.config import load, parse
from cellctl.errors import ConfigError
from cellctl.registry import Registry

REG = Registry(extra_drivers={"fake": FakeDriver}, extra_sims={"fake": FakeSim})

GOOD = """
[cell]
name = "cell-a"

[logging]
level = "debug"

[supervisor]
backoff_initial_s = 0.5

[devices.printer1]
driver = "fake"
backend = "sim"
processes = ["print"]
setup = { material = "PLA", nozzle = "0.4" }
baudrate = 250000

[devices.printer1.sim]
label = "p1"
time_factor = 10.0
"""


def write(tmp_path: Path, text: str, name: str = "cell.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, REG)
    return info.value.problems


def test_good_file_loads(tmp_path: Path) -> None:
    cell = load(write(tmp_path, GOOD), REG)
    dev = cell.devices["printer1"]
    assert cell.name == "cell-a"
    assert dev.driver == "fake" and dev.common.backend == "sim"
    assert dev.options.baudrate == 250000  # type: ignore[attr-defined]
    assert dev.sim is not None and dev.sim.time_factor == 10.0
    assert dev.common.setup == {"material": "PLA", "nozzle": "0.4"}
    assert cell.config.logging.level == "debug"
    assert cell.state_dir == tmp_path / "state"


def test_models_are_frozen(tmp_path: Path) -> None:
    cell = load(write(tmp_path, GOOD), REG)
    with pytest.raises(ValueError):
        cell.config.cell.name = "other"  # type: ignore[misc]


def test_wrong_type_names_file_key_and_expectation(tmp_path: Path) -> None:
    text = GOOD.replace("baudrate = 250000", 'baudrate = "fast"')
    path = tmp_path / "cell.toml"
    assert problems(tmp_path, text) == [
        f'{path}: devices.printer1.baudrate: expected an integer, got "fast"'
    ]


def test_missing_key(tmp_path: Path) -> None:
    text = GOOD.replace('name = "cell-a"', "")
    assert problems(tmp_path, text) == [
        f"{tmp_path / 'cell.toml'}: cell.name: required key is missing"
    ]


def test_missing_driver_key(tmp_path: Path) -> None:
    text = GOOD.replace('driver = "fake"\n', "")
    assert problems(tmp_path, text) == [
        f"{tmp_path / 'cell.toml'}: devices.printer1.driver: required key is missing"
    ]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('name = "cell-a"', 'name = "cell-a"\ncolour = "red"', "cell.colour"),
        ('level = "debug"', 'level = "debug"\nverbose = true', "logging.verbose"),
        ("baudrate = 250000", "baudrate = 250000\nbaud = 9600", "devices.printer1.baud"),
        ('label = "p1"', 'label = "p1"\nspeed = 2', "devices.printer1.sim.speed"),
        ("[logging]", "[mystery]\nx = 1\n\n[logging]", "mystery"),
    ],
)
def test_unknown_key_at_any_depth(tmp_path: Path, old: str, new: str, key: str) -> None:
    [line] = problems(tmp_path, GOOD.replace(old, new))
    assert line.startswith(f"{tmp_path / 'cell.toml'}: {key}: unknown key"), line


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (
            'name = "cell-a"',
            'name = "cell-a"\nnmae = "cell-a"',
            "cell.nmae: unknown key; did you mean 'name'?",
        ),
        (
            "baudrate = 250000",
            "baud = 9600",
            "printer1.baud: unknown key; did you mean 'baudrate'?",
        ),
        ("processes =", "proceses =", "printer1.proceses: unknown key; did you mean 'processes'?"),
        (
            "time_factor =",
            "time_facter =",
            "sim.time_facter: unknown key; did you mean 'time_factor'?",
        ),
        ('level = "debug"', 'levle = "debug"', "logging.levle: unknown key; did you mean 'level'?"),
        ('level = "debug"', 'zzz = "debug"', "logging.zzz: unknown key"),
    ],
)
def test_unknown_key_names_the_closest_known_one(
    tmp_path: Path, old: str, new: str, said: str
) -> None:
    [line] = problems(tmp_path, GOOD.replace(old, new))
    assert line.endswith(said), line


def test_unknown_key_deep_in_a_real_driver_names_the_closest(tmp_path: Path) -> None:
    text = """
[cell]
name = "c"
[devices.p1]
driver = "marlin"
backend = "sim"
baudrate = 250000
[devices.r1]
driver = "opcua"
backend = "sim"
namespace_uri = "urn:x"
tags.a = { node = "s=A", type = "int", nodee = 1 }
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        f"{path}: devices.p1.baudrate: unknown key; did you mean 'baud'?",
        f"{path}: devices.r1.tags.a.nodee: unknown key; did you mean 'node'?",
    ]


def test_unknown_driver_lists_known_ones(tmp_path: Path) -> None:
    [line] = problems(tmp_path, GOOD.replace('driver = "fake"', 'driver = "fax"'))
    assert line.startswith(f"{tmp_path / 'cell.toml'}: devices.printer1.driver: ")
    assert "unknown driver 'fax'" in line and "known: " in line and "fake" in line


def test_duplicate_device_id(tmp_path: Path) -> None:
    text = GOOD + '\n[devices.printer1]\ndriver = "fake"\n'
    [line] = problems(tmp_path, text)
    assert "duplicate device id 'printer1'" in line and line.startswith(str(tmp_path))


def test_duplicate_device_id_differing_in_case(tmp_path: Path) -> None:
    text = GOOD + '\n[devices.Printer1]\ndriver = "fake"\n'
    [line] = problems(tmp_path, text)
    assert "devices.Printer1: duplicate device id" in line


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    [line] = problems(tmp_path, GOOD.replace("baudrate = 250000", "baudrate = = 1"))
    assert line.startswith(f"{tmp_path / 'cell.toml'}: TOML syntax error: ")
    assert "line 16" in line


def test_empty_file(tmp_path: Path) -> None:
    [line] = problems(tmp_path, "  \n\n")
    assert (
        line == f"{tmp_path / 'cell.toml'}: the file is empty; expected at least [cell] with a name"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml", REG)
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: file not found"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("baudrate = 250000", 'baudrate = "fast"').replace(
        'level = "debug"', 'level = "loud"'
    )
    lines = problems(tmp_path, text)
    assert len(lines) == 2
    assert any("logging.level: expected 'debug', 'info', 'warning' or 'error'" in x for x in lines)


def test_bad_device_id(tmp_path: Path) -> None:
    [line] = problems(tmp_path, GOOD.replace("devices.printer1", 'devices."printer 1"'))
    assert "devices.printer 1: device id must start with a letter" in line


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellctl.driver import Secret, SecretUnavailable

    monkeypatch.setenv("CELL_PW", "hunter2")
    assert Secret(env="CELL_PW").reveal() == "hunter2"
    (tmp_path / "pw").write_text("s3cret\n")
    assert Secret(file=tmp_path / "pw").reveal() == "s3cret"
    assert "hunter2" not in repr(Secret(env="CELL_PW"))
    monkeypatch.delenv("CELL_PW")
    unset = Secret(env="CELL_PW")  # resolved when used, not when the config is read
    with pytest.raises(SecretUnavailable, match="environment variable CELL_PW is not set"):
        unset.reveal()
    with pytest.raises(SecretUnavailable, match="cannot read secret file"):
        Secret(file=tmp_path / "nope").reveal()
    with pytest.raises(ValueError, match="exactly one of"):
        Secret()


# Documents built from TOML-ish values: any mix must yield a Cell or a ConfigError.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["fake", "sim", "real", "debug", "cell"]),
)
keys = st.one_of(
    st.sampled_from(
        [
            "cell",
            "devices",
            "logging",
            "supervisor",
            "name",
            "driver",
            "backend",
            "sim",
            "baudrate",
            "level",
            "setup",
            "processes",
            "p1",
            "time_factor",
        ]
    ),
    st.text(alphabet=string.printable, max_size=6),
)
docs = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(keys, docs, max_size=5))
def test_any_document_gives_a_cell_or_a_config_error(doc: dict[str, object]) -> None:
    try:
        parse(Path("fuzz.toml"), doc, REG)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.toml: ") for p in exc.problems)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_give_a_cell_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "cell.toml"
    path.write_bytes(raw)
    try:
        load(path, REG)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems)


def test_thread_switch_interval_is_bounded_and_applied(tmp_path: Path) -> None:
    bad = GOOD.replace("backoff_initial_s = 0.5", "backoff_initial_s = 0.5\nthread_switch_ms = 0")
    (line,) = problems(tmp_path, bad)
    assert "supervisor.thread_switch_ms" in line and "greater than 0" in line
    cell = load(write(tmp_path, GOOD), REG)
    assert cell.config.supervisor.thread_switch_ms == 1.0
    before = sys.getswitchinterval()
    try:
        apply_thread_switch(cell.config.supervisor)
        assert sys.getswitchinterval() == pytest.approx(0.001)
    finally:
        sys.setswitchinterval(before)
