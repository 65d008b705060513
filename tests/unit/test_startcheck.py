"""`cellctl check` refuses what `cellctl run` refuses, in the same words (issue 24).

Each config in the table passes the config models but cannot start: `check`
must say why (exit 2) and `run` must refuse it with the very same lines before
it starts anything. Secrets resolve lazily: commands that talk to no device
(`jobs --local`) work without them; `check` names each missing one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cellctl_drivers.opcua.certs import make_certificate

from cellctl import app as app_mod
from cellctl import cli
from cellctl.store import Store

HEAD = '[cell]\nname = "c"\n'
MARLIN = '[devices.p1]\ndriver = "marlin"\nbackend = "real"\n'
ROBOT = '[devices.r1]\ndriver = "opcua"\nbackend = "sim"\n'
TLS = '[mqtt]\nport = 1\n[mqtt.tls]\nca_file = "{d}/ca.pem"\n'


def _files(d: Path) -> None:
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    (d / "a-file").write_text("")


# (config body with {d} for the test's folder, the problem's key and words)
REFUSED = [
    (MARLIN, 'devices.p1.port: required with backend = "real"'),
    (MARLIN.replace("marlin", "grbl"), 'devices.p1.port: required with backend = "real"'),
    (ROBOT.replace('"sim"', '"real"'), 'devices.r1.endpoint: required with backend = "real"'),
    (
        ROBOT.replace('"sim"', '"real"') + 'endpoint = "http://robot:4840"',
        "devices.r1.endpoint: expected opc.tcp://host:port/…, got 'http://robot:4840'",
    ),
    (
        ROBOT + 'certificate = "{d}/missing.pem"',
        "devices.r1.certificate: cannot load {d}/missing.pem: No such file or directory",
    ),
    (ROBOT + 'certificate = "{d}/garbage.pem"', "devices.r1.certificate: cannot load"),
    (ROBOT + 'private_key = "{d}/garbage.pem"', "devices.r1.private_key: cannot load"),
    (
        ROBOT + 'trusted_server_certs = ["{d}/nowhere"]',
        "devices.r1.trusted_server_certs.0: cannot load {d}/nowhere: No such file or directory",
    ),
    (
        ROBOT + 'username = "op"\npassword = { env = "CELLCTL_TEST_UNSET_PW" }',
        "devices.r1.password: environment variable CELLCTL_TEST_UNSET_PW is not set",
    ),
    (
        '[mqtt]\nport = 1\nusername = "u"\npassword = { file = "{d}/no-secret" }',
        "mqtt.password: cannot read secret file {d}/no-secret: No such file or directory",
    ),
    (TLS, "mqtt.tls.ca_file: cannot load {d}/ca.pem"),
    (TLS.replace("ca.pem", "garbage.pem"), "mqtt.tls.ca_file: cannot load {d}/garbage.pem"),
    (
        '[devices.plc]\ndriver = "modbus"\nbackend = "real"\ntransport = "rtu"\n'
        'serial = { port = "" }\ntags.x = { table = "coil", address = 1 }',
        'devices.plc.serial.port: required with backend = "real"',
    ),
    ('[jobs]\nhotfolder = "a-file/hot"', "jobs.hotfolder: hot folder {d}/a-file/hot:"),
]


def _config(d: Path, body: str, head: str = HEAD) -> Path:
    path = d / "cell.toml"
    path.write_text(head + body.replace("{d}", str(d)) + "\n")
    return path


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(("body", "said"), REFUSED, ids=[s.split(":")[0] for _, s in REFUSED])
def test_run_refuses_what_check_refuses_in_the_same_words(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    said: str,
) -> None:
    monkeypatch.delenv("CELLCTL_TEST_UNSET_PW", raising=False)
    _files(tmp_path)
    cfg = _config(tmp_path, body)
    _check_and_run_agree(cfg, said.replace("{d}", str(tmp_path)), capsys, monkeypatch)


def _check_and_run_agree(
    cfg: Path, said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, out, checked = _main(capsys, "check", "-c", str(cfg))
    assert rc == 2 and "config OK" not in out, (out, checked)
    assert f"{cfg}: {said}" in checked

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("run started a cell that check refused")

    monkeypatch.setattr(app_mod, "App", started)
    rc, _, ran = _main(capsys, "run", "-c", str(cfg))
    assert (rc, ran) == (2, checked)


def test_a_store_from_a_newer_cellctl_is_refused_by_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "state" / "cellctl.db"
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    said = f"cell.state_dir: the store {db} has schema version 999, newer than this cellctl"
    _check_and_run_agree(_config(tmp_path, ""), said, capsys, monkeypatch)


def test_the_cellctl_command_refuses_a_real_printer_without_a_port(tmp_path: Path) -> None:
    """The issue's example, end to end: `cellctl run` exits 2 with check's line, at once."""
    cfg = _config(tmp_path, MARLIN)
    check, run = (
        subprocess.run(
            [sys.executable, "-m", "cellctl", verb, str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for verb in ("check", "run")
    )
    assert check.returncode == 2 and run.returncode == 2, (check.stderr, run.stderr)
    assert run.stderr == check.stderr
    assert f'{cfg}: devices.p1.port: required with backend = "real"' in run.stderr


def test_good_files_pass_and_an_unplugged_port_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = make_certificate(tmp_path, "client", "urn:test:client", server=False)
    trusted = tmp_path / "trusted"
    make_certificate(trusted, "server", "urn:test:server", server=True).private_key.unlink()
    body = (
        MARLIN
        + 'port = "{d}/ttyUSB-unplugged"\n'
        + ROBOT
        + f'certificate = "{pair.certificate}"\nprivate_key = "{pair.private_key}"\n'
        + f'trusted_server_certs = ["{trusted}"]\n'
    )
    cfg = _config(tmp_path, body)
    rc, out, err = _main(capsys, "check", "-c", str(cfg))
    assert rc == 0 and out.endswith("config OK\n"), (out, err)
    assert err == (
        f"warning: {cfg}: devices.p1.port: {tmp_path}/ttyUSB-unplugged does not exist now; "
        "the daemon retries until it appears\n"
    )


def test_jobs_local_needs_no_device_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELLCTL_TEST_UNSET_PW", raising=False)
    body = ROBOT + 'username = "op"\npassword = { env = "CELLCTL_TEST_UNSET_PW" }'
    cfg = _config(tmp_path, body)

    async def make_store() -> None:
        async with Store(tmp_path / "state" / "cellctl.db"):
            pass

    asyncio.run(make_store())  # as a daemon that ran once leaves it
    rc, out, err = _main(capsys, "jobs", "-c", str(cfg), "--local")
    assert (rc, out, err) == (0, "no jobs\n", "")
    rc, out, err = _main(capsys, "check", "-c", str(cfg))
    assert rc == 2 and "devices.r1.password: environment variable" in err, err


def test_an_embedded_broker_without_amqtt_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel installed without the `demo` extra: run needs amqtt only if no broker listens."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "amqtt" else real(name, *a)
    )
    cfg = _config(
        tmp_path, "[mqtt]\nport = 1884\nembedded = true\n[access]\nallow_anonymous = true"
    )
    rc, out, err = _main(capsys, "check", "-c", str(cfg))
    assert rc == 0 and out.endswith("config OK\n"), (out, err)
    assert err.startswith(f"warning: {cfg}: mqtt.embedded: the amqtt package is not installed")
