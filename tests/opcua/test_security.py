"""Basic256Sha256 SignAndEncrypt with a user login; refusals are one clear error each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cellctl_drivers.opcua.driver import AccessDenied, OpcUaDriver
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.sim import RobotSim
from cellctl_drivers.opcua.simconfig import sim_robot_table

from cellctl.config import DeviceCommon, DeviceConfig, SupervisorSection
from cellctl.errors import WrongDevice
from cellctl.model import DeviceState, Event, Program, ProgramKind, Samples, Step, StepOutcome
from cellctl.registry import Registry
from cellctl.supervisor import DeviceRunner

from .conftest import PASSWORD_ENV, Certs, make_driver, secure_table, secured

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secure_sim(robot_sim: RobotSim, certs: Certs) -> AsyncIterator[RobotSim]:
    async with secured(robot_sim, certs.server, certs) as sim:
        yield sim


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")


async def test_sign_and_encrypt_with_user_runs_a_program(
    secure_sim: RobotSim, certs: Certs
) -> None:
    events: list[Event] = []
    driver = make_driver(secure_sim.endpoint, events, **secure_table(certs))
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        assert driver.status().state == DeviceState.IDLE
        step = Step("j", 0, "tend", Program(ProgramKind.ROBOT_PROGRAM, name="pick"))
        async with asyncio.timeout(20):
            result = await driver.run(step, lambda p: None)
        assert result.outcome == StepOutcome.DONE, result.message
        serving.cancel()
    assert any(isinstance(e, Samples) for e in events)
    assert secure_sim.robot.starts[-1].program == 1


async def _refused(endpoint: str, caplog: pytest.LogCaptureFixture, **table: Any) -> AccessDenied:
    driver = make_driver(endpoint, **table)
    caplog.clear()
    caplog.set_level(logging.INFO)
    with pytest.raises(AccessDenied) as info:
        async with asyncio.timeout(20):
            await driver.__aenter__()
    await driver.__aexit__(None, None, None)
    # One clear error, not a storm of library warnings and tracebacks.
    noisy = [
        r for r in caplog.records if r.name.startswith("asyncua") and r.levelno >= logging.WARNING
    ]
    assert not noisy, [r.getMessage() for r in noisy]
    assert isinstance(info.value, WrongDevice)  # the supervisor backs off to its cap
    return info.value


async def test_wrong_password_is_refused_clearly(
    secure_sim: RobotSim,
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "guess")
    err = await _refused(secure_sim.endpoint, caplog, **secure_table(certs))
    assert "wrong user name or password" in str(err)
    assert "guess" not in str(err)


async def test_anonymous_login_is_refused(
    secure_sim: RobotSim, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    err = await _refused(
        secure_sim.endpoint, caplog, **secure_table(certs, username=None, password=None)
    )
    assert "login" in str(err) or "Identity" in str(err)


async def test_untrusted_server_certificate_is_refused(
    secure_sim: RobotSim, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    table = secure_table(certs, trusted_server_certs=[str(certs.rogue_server.certificate)])
    err = await _refused(secure_sim.endpoint, caplog, **table)
    assert "not in trusted_server_certs" in str(err)


async def test_untrusted_client_certificate_is_refused(
    secure_sim: RobotSim, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    table = secure_table(
        certs,
        certificate=str(certs.rogue_client.certificate),
        private_key=str(certs.rogue_client.private_key),
    )
    err = await _refused(secure_sim.endpoint, caplog, **table)
    assert "certificate" in str(err)


async def test_supervisor_reports_a_wrong_password_once_and_backs_off(
    secure_sim: RobotSim, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "guess")
    options = OpcUaOptions.model_validate(
        sim_robot_table(endpoint=secure_sim.endpoint, **secure_table(certs))
    )
    config = DeviceConfig(id="robot", common=DeviceCommon(driver="opcua"), options=options)
    policy = SupervisorSection(backoff_initial_s=0.1, backoff_max_s=30.0)
    registry = Registry(extra_drivers={"opcua": OpcUaDriver})
    runner = DeviceRunner(config, registry, lambda e: None, policy)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runner.run())
        # The first backoff is drawn just after the failure is counted: wait for it.
        async with asyncio.timeout(20):
            while not runner.delays:
                await asyncio.sleep(0.05)
        task.cancel()
    assert runner.failures >= 1
    assert "AccessDenied" in runner.last_error
    assert "wrong user name or password" in runner.last_error
    assert runner.delays and runner.delays[0] >= 30.0 * 0.8  # no quick retry storm


async def test_missing_certificate_files_are_one_clear_error(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    driver = make_driver(
        "opc.tcp://127.0.0.1:1/never", **secure_table(certs, trusted_server_certs=[str(missing)])
    )
    with pytest.raises(AccessDenied, match="trusted_server_certs"):
        await driver.__aenter__()
    await driver.__aexit__(None, None, None)
    driver = make_driver(
        "opc.tcp://127.0.0.1:1/never", **secure_table(certs, private_key=str(missing))
    )
    with pytest.raises(AccessDenied, match="private_key"):
        await driver.__aenter__()
