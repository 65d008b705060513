"""`cellctl jobs/submit/cancel/answer/setup/service` over MQTT: the real CLI (a subprocess)
against a real daemon (a subprocess) through a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from jobs.conftest import REGISTRY, gcode
from mqtt_broker import Mosquitto, free_port, make_certs, password_file
from mqtt_rig import Commander, Subscriber
from support.daemon import spawn

from cellctl import cli
from cellctl.cli import jobs as cli_jobs
from cellctl.config import load
from cellctl.telemetry.topics import Topics

BOUND = 20.0


def write_cell(
    path: Path, port: int, mqtt_extra: str = "", access: str = "allow_anonymous = true"
) -> Path:
    path.write_text(
        f"""
[cell]
name = "rj"
state_dir = "state"

[supervisor]
backoff_initial_s = 0.05
backoff_max_s = 0.2
stable_after_s = 0

[jobs]
dispatch_interval_s = 0.2
progress_flush_s = 0.1

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_initial_s = 0.1
reconnect_max_s = 1.0
{mqtt_extra}

[devices.p1]
driver = "jobsim"
backend = "sim"
processes = ["print"]
setup = {{ material = "PLA", nozzle = "0.4" }}
build_volume = [250, 210, 210]
sim = {{ time_factor = 10.0, line_s = 0.01 }}

[devices.r1]
driver = "jobsim"
backend = "sim"
processes = ["tend"]
sim = {{ time_factor = 10.0, step_s = 0.2 }}

[access]
{access}
"""
    )
    return path


def cellctl(
    *argv: str, env: dict[str, str] | None = None, bound: float = BOUND
) -> tuple[int, str, str]:
    """The installed command line, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "cellctl", *argv],
        capture_output=True,
        text=True,
        timeout=bound,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


@contextlib.asynccontextmanager
async def daemon(config: Path, log: Path) -> AsyncIterator[None]:
    """The real daemon in a subprocess, stopped with SIGTERM (bounded) on exit."""
    proc = spawn(config, log)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.asynccontextmanager
async def online_cell(config: Path, port: int, log: Path) -> AsyncIterator[Subscriber]:
    """The daemon, and a subscriber to everything of its cell once it is online."""
    async with daemon(config, log):
        sub = await Subscriber(port, [Topics("rj").everything]).start()
        try:
            await sub.online()
            yield sub
        finally:
            sub.stop()


async def eventually(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(BOUND):
            while not await asyncio.to_thread(check):
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def job_state(sub: Subscriber, job_id: str, state: str) -> None:
    await sub.wait_for(
        lambda: any(m.json().get("state") == state for m in sub.on(f"jobs/{job_id}/events")),
        f"job {job_id} {state}",
        within_s=BOUND,
    )


async def test_submit_jobs_and_done_over_mqtt(
    tmp_path: Path,
    broker: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = write_cell(tmp_path / "cell.toml", broker.port)
    part = tmp_path / "part.gcode"
    part.write_bytes(gcode(20).replace("\n", "\r\n").encode())  # CRLF travels unchanged
    (tmp_path / "route.toml").write_text(
        'id = "route-1"\nquantity = 2\npriority = 3\n'
        '[[route]]\nprocess = "print"\nprogram = "part.gcode"\nsetup = { material = "PLA" }\n'
        '[[route]]\nprocess = "tend"\nprogram = { kind = "robot", name = "unload" }\n'
        'reserves = ["@previous"]\n'
    )
    c = str(cfg)
    async with online_cell(cfg, broker.port, tmp_path / "daemon.log") as sub:
        rc, out, err = cellctl("submit", "-c", c, str(part))
        assert rc == 0, (out, err)
        job_id = out.split()[1].rstrip(":")
        assert out.strip() == f"job {job_id}: accepted (job queued)"
        assert job_id.startswith("part-")
        await job_state(sub, job_id, "done")

        rc, out, err = cellctl("submit", "-c", c, str(part))  # its job ended: a reprint
        assert rc == 0 and out.strip() == f"job {job_id}-r1: accepted (job queued)", (out, err)
        rc, out, err = cellctl("reprint", "-c", c, job_id)  # the explicit form
        assert rc == 0 and out.strip() == f"job {job_id}-r2: accepted (job queued)", (out, err)
        rc, out, err = cellctl("reprint", "-c", c, "no-such-job")
        assert rc == 1 and "rejected: no job 'no-such-job'" in err, (out, err)
        await job_state(sub, f"{job_id}-r1", "done")
        await job_state(sub, f"{job_id}-r2", "done")

        rc, out, err = cellctl("submit", "-c", c, str(tmp_path / "route.toml"))
        assert rc == 0, (out, err)
        await job_state(sub, "route-1", "done")

        rc, remote_table, err = cellctl("jobs", "-c", c)
        assert rc == 0, err
        rc, out, err = cellctl("jobs", "-c", c, "--json")
        assert rc == 0, err
        listed = {j["id"]: j for j in json.loads(out)}
        assert set(listed) == {job_id, f"{job_id}-r1", f"{job_id}-r2", "route-1"}
        assert [listed[j]["reprint_of"] for j in (job_id, f"{job_id}-r1")] == [None, job_id]
        again = listed[f"{job_id}-r2"]["steps"][0]["program"]
        assert again == listed[job_id]["steps"][0]["program"]  # the same stored program
        step = listed[job_id]["steps"][0]
        # What the local form would have submitted: same process, program name, bytes, setup.
        assert step["program"]["file"] == "part.gcode"
        assert step["program"]["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
        assert step["setup"] == {"material": "PLA", "nozzle": "0.4"}
        route = listed["route-1"]
        assert (route["quantity"], route["priority"], len(route["steps"])) == (2, 3, 4)
        assert route["steps"][1]["reserves"] == ["@previous"]
        assert route["steps"][1]["program"]["kind"] == "robot"
        assert route["steps"][1]["program"]["name"] == "unload"

        rc, out, err = cellctl("status", "-c", c)  # the same client under status and ack
        assert rc == 0 and "p1" in out and "r1" in out, (out, err)
        rc, out, err = cellctl("ack", "-c", c, "p1", "acknowledge")
        assert rc == 1 and "rejected: no step is held on device 'p1'" in err, err

        rc, remote_one, err = cellctl("jobs", "-c", c, "--job", job_id)
        assert rc == 0 and "queued → starting" in remote_one and "running → done" in remote_one

        # The local form (the store, read here) prints the same.
        monkeypatch.setattr(cli_jobs, "load", lambda path: load(path, REGISTRY))
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["jobs", c, "--local"]) == 0
        assert capsys.readouterr().out == remote_table
        assert await asyncio.to_thread(cli.main, ["jobs", c, "--local", "--job", job_id]) == 0
        assert capsys.readouterr().out == remote_one


async def test_hold_setup_answer_cancel_and_rejections(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_cell(tmp_path / "cell.toml", broker.port)
    # The baseline's pre-flight hold (the planner would ask for a PETG changeover instead).
    with cfg.open("a") as f:
        f.write('\n[scheduler]\nmethod = "baseline"\n')
    c = str(cfg)
    (tmp_path / "petg.gcode").write_text(gcode(10, material="PETG"))
    # No setup asked for: dispatch gives it to p1, whose pre-flight holds it (PLA loaded).
    petg = tmp_path / "petg.toml"
    petg.write_text('id = "petg"\n[[route]]\nprocess = "print"\nprogram = "petg.gcode"\n')
    wide = tmp_path / "wide.gcode"
    wide.write_text(gcode(10, nozzle=0.6))
    async with online_cell(cfg, broker.port, tmp_path / "daemon.log") as sub:
        rc, out, err = cellctl("submit", "-c", c, str(petg))
        assert rc == 0, err
        petg_id = out.split()[1].rstrip(":")
        await job_state(sub, petg_id, "held")  # pre-flight: PETG file, PLA loaded
        rc, out, err = cellctl("answer", "-c", c, petg_id, "0", "resume")  # from line 1: held again
        assert rc == 0 and f"resume {petg_id}/0: accepted" in out, (out, err)

        def step_holds() -> int:
            events = [m.json() for m in sub.on("petg/events")]
            return sum(e["event"] == "step" and e["state"] == "held" for e in events)

        await sub.wait_for(lambda: step_holds() == 2, "held again after resume")

        rc, out, err = cellctl("setup", "-c", c, "p1", "material=PETG", "--merge")
        assert rc == 0 and "setup of p1: done (material=PETG, nozzle=0.4)" in out, (out, err)
        rc, out, err = cellctl("answer", "-c", c, petg_id, "0", "retry")
        assert rc == 0 and f"retry {petg_id}/0: accepted" in out, (out, err)
        await job_state(sub, petg_id, "done")

        rc, out, err = cellctl("service", "-c", c, "p1", "out", "--note", "nozzle swap")
        assert rc == 0 and "p1 out of service: done" in out, (out, err)
        rc, out, err = cellctl("submit", "-c", c, str(wide))
        assert rc == 0, err
        wide_id = out.split()[1].rstrip(":")
        rc, out, err = cellctl("cancel", "-c", c, wide_id)
        assert rc == 0 and f"cancel {wide_id}: accepted (job cancelled)" in out, (out, err)
        await job_state(sub, wide_id, "cancelled")
        rc, out, err = cellctl("service", "-c", c, "p1", "in")
        assert rc == 0, err

        # A PLA job on p1, which now holds PETG: held by pre-flight, then failed by hand.
        pla = tmp_path / "pla.toml"
        (tmp_path / "pla.gcode").write_text(gcode(10, material="PLA"))
        pla.write_text('id = "pla"\n[[route]]\nprocess = "print"\nprogram = "pla.gcode"\n')
        rc, out, err = cellctl("submit", "-c", c, str(pla))
        assert rc == 0, err
        pla_id = out.split()[1].rstrip(":")
        await job_state(sub, pla_id, "held")
        # An answer naming an attempt that is not the current hold's is refused.
        replies = await Subscriber(broker.port, [f"{Topics('rj').base}/replies/#"]).start()
        try:
            stale = {"job": pla_id, "step": 0, "action": "retry", "attempt": 99}
            r = await Commander(replies, Topics("rj")).send("answer_hold", stale)
        finally:
            replies.stop()
        assert r["outcome"] == "rejected" and "attempt 99 is gone" in r["reason"], r
        rc, out, err = cellctl("answer", "-c", c, pla_id, "0", "fail")
        assert rc == 0 and f"fail {pla_id}/0: accepted" in out, (out, err)
        await job_state(sub, pla_id, "failed")

        rc, out, err = cellctl("cancel", "-c", c, "nope")
        assert rc == 1 and err.strip() == "cancel nope: rejected: no job 'nope'", err
        rc, out, err = cellctl("answer", "-c", c, petg_id, "0", "retry")
        assert rc == 1 and "not held" in err and "Traceback" not in err, err
        rc, out, err = cellctl("jobs", "-c", c, "--job", "nope")
        assert rc == 1 and "no job 'nope'" in err, err
        rc, out, err = cellctl("submit", "-c", c, str(tmp_path / "missing.gcode"))
        assert rc == 2 and "cannot read" in err


async def test_broker_down_or_no_daemon_is_one_clear_line(
    tmp_path: Path, broker: Mosquitto
) -> None:
    port = free_port()  # nothing listens here
    cfg = write_cell(tmp_path / "down.toml", port)
    rc, out, err = cellctl("jobs", "-c", str(cfg))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and f"cannot reach the MQTT broker at 127.0.0.1:{port}" in err

    cfg = write_cell(tmp_path / "cell.toml", broker.port)  # a broker, but no daemon
    rc, out, err = cellctl("cancel", "-c", str(cfg), "j-1", "--timeout", "1")
    assert rc == 1 and err.count("\n") == 1, err
    assert "no reply to cancel from cell 'rj' within 1 s" in err
    assert "the daemon may not be running" in err

    bad = tmp_path / "bad.toml"
    bad.write_text('[cell]\nname = "rj"\n[mqtt]\nport = "x"\n')
    rc, out, err = cellctl("jobs", "-c", str(bad))
    assert rc == 2 and "mqtt.port" in err and "Traceback" not in err


async def test_embedded_broker_speaks_311_and_the_cli_follows(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_cell(tmp_path / "cell.toml", port, mqtt_extra="embedded = true")
    part = tmp_path / "part.gcode"
    part.write_text(gcode(10))
    c = str(cfg)
    async with daemon(cfg, tmp_path / "daemon.log"):
        # amqtt refuses MQTT 5: the CLI goes on in 3.1.1, replies matched by "id".
        await eventually(lambda: cellctl("jobs", "-c", c, "--timeout", "2")[0] == 0, "the cell")
        rc, out, err = cellctl("submit", "-c", c, str(part))
        assert rc == 0 and "accepted" in out, (out, err)
        job_id = out.split()[1].rstrip(":")

        def done() -> bool:
            rc, out, _ = cellctl("jobs", "-c", c, "--json")
            return rc == 0 and any(
                j["id"] == job_id and j["state"] == "done" for j in json.loads(out)
            )

        await eventually(done, f"job {job_id} done")


def test_tls_credentials_and_acl_reach_the_cli_as_one_line(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    pw = password_file(tmp_path, {"operator": "op-pw", "reader": "rd-pw"})
    acl = tmp_path / "acl"
    acl.write_text(
        "user operator\ntopic readwrite cellctl/v2/#\nuser reader\ntopic read cellctl/v2/#\n"
    )
    broker = Mosquitto(
        tmp_path / "broker",
        anonymous=False,
        extra=(
            f"password_file {pw}\nacl_file {acl}\ncafile {certs.ca}\n"
            f"certfile {certs.server_cert}\nkeyfile {certs.server_key}\n"
            "require_certificate true\n"
        ),
    )
    broker.start()
    try:
        cfg = write_cell(
            tmp_path / "cell.toml",
            broker.port,
            mqtt_extra=(
                f'tls = {{ ca_file = "{certs.ca}", cert_file = "{certs.client_cert}", '
                f'key_file = "{certs.client_key}" }}'
            ),
        )
        c = str(cfg)

        def as_user(user: str, password: str, *argv: str) -> tuple[int, str, str]:
            env = {"CELLCTL_MQTT_USERNAME": user, "CELLCTL_MQTT_PASSWORD": password}
            return cellctl(*argv, env=env)

        rc, _, err = as_user("operator", "wrong", "jobs", "-c", c)
        assert rc == 1 and err.count("\n") == 1 and "refused the connection" in err, err
        # Through TLS, logged in, subscribed, published: only the daemon is missing.
        rc, _, err = as_user("operator", "op-pw", "jobs", "-c", c, "--timeout", "1")
        assert rc == 1 and "the daemon may not be running" in err, err
        rc, _, err = as_user("reader", "rd-pw", "cancel", "-c", c, "j-1", "--timeout", "1")
        assert rc == 1 and "refused command cancel: Not authorized" in err, err
        # No environment: the config's own username and password secret are used.
        secret = tmp_path / "op.pw"
        secret.write_text("op-pw\n")
        with_login = write_cell(
            tmp_path / "login.toml",
            broker.port,
            mqtt_extra=(
                f'username = "operator"\npassword = {{ file = "{secret}" }}\n'
                f'tls = {{ ca_file = "{certs.ca}", cert_file = "{certs.client_cert}", '
                f'key_file = "{certs.client_key}" }}'
            ),
        )
        rc, _, err = cellctl("jobs", "-c", str(with_login), "--timeout", "1")
        assert rc == 1 and "the daemon may not be running" in err, err
    finally:
        broker.stop()


async def test_answer_a_changeover_and_clear_a_bed_over_mqtt(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """`cellctl answer --device --setup` and `cellctl bed-clear` against the live planner
    (issue 20), through the broker."""
    cfg = write_cell(tmp_path / "cell.toml", broker.port)
    cfg.write_text(cfg.read_text() + '\n[scheduler]\nmethod = "planner"\nbed_clearing = ["p1"]\n')
    part = tmp_path / "petg.gcode"
    part.write_text(gcode(20, material="PETG"))
    c = str(cfg)
    async with online_cell(cfg, broker.port, tmp_path / "daemon.log") as sub:
        rc, out, err = cellctl("submit", c, str(part))
        assert rc == 0, (out, err)
        job_id = out.split()[1].rstrip(":")

        def asked(kind: str) -> list[dict[str, Any]]:
            return [m.json() for m in sub.on("p1/requests") if m.json()["kind"] == kind]

        await sub.wait_for(lambda: bool(asked("changeover")), "a changeover request", BOUND)
        rc, out, err = cellctl("changeover", "-c", c, "p1", "material=PETG")
        assert rc == 0 and "changeover on p1: recorded (material=PETG, nozzle=0.4)" in out, (
            out,
            err,
        )
        await job_state(sub, job_id, "done")
        await sub.wait_for(lambda: bool(asked("clear_bed")), "a clear_bed request", BOUND)
        rc, out, err = cellctl("bed-clear", c, "p1")
        assert rc == 0 and "bed of p1: cleared" in out, (out, err)
        rc, out, err = cellctl("bed-clear", c, "p1")
        assert rc == 1 and "not waiting to be cleared" in err, (out, err)
