"""The job-content policy against the real simulators, through the whole job service.

Each test runs the same job on two printers (or mills): one whose `job_policy.allow`
lifts the rule, where the harm happens on the simulated firmware, and one with the
defaults, where pre-flight holds the step naming the line and the rule, and the
firmware never sees a line of the job."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cellctl_drivers.grbl.sim import GrblSim, GrblSimOptions
from cellctl_drivers.marlin.sim import MarlinSim, MarlinSimOptions
from jobs.conftest import make_cell, running, wait_job
from jobs.test_hotfolder import folder_for

from cellctl.jobs.spec import JobSpec, StepSpec
from cellctl.model import JobState


@contextlib.asynccontextmanager
async def sims(*sims: Any) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for sim in sims:
            await stack.enter_async_context(sim)
        yield


def job(job_id: str, process: str, program: str) -> JobSpec:
    return JobSpec(id=job_id, route=(StepSpec(process=process, program=program),))


async def test_marlin_job_may_not_disarm_the_dead_man(tmp_path: Path) -> None:
    fast = {"time_factor": 50.0, "emulate_link": False, "home_s": 0.1}
    open_sim, guarded_sim = MarlinSim(MarlinSimOptions(**fast)), MarlinSim(MarlinSimOptions(**fast))
    prog = tmp_path / "disarm.gcode"
    prog.write_text("G28\nM85 S0\nG1 X10 F3000\nG1 X20 F3000\n")
    async with sims(open_sim, guarded_sim):
        printer = {"driver": "marlin", "backend": "real", "deadman_s": 60}
        cell = make_cell(
            tmp_path,
            {
                "open": {
                    **printer,
                    "port": open_sim.endpoint,
                    "processes": ["print-open"],
                    "job_policy": {"allow": ["M85"]},
                },
                "guarded": {**printer, "port": guarded_sim.endpoint, "processes": ["print"]},
            },
        )
        async with running(cell) as app:
            await app.jobs.submit(job("harm", "print-open", "disarm.gcode"), {"disarm.gcode": prog})
            done = await wait_job(app, "harm", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
            # The harm: the driver armed the dead-man for the job, the job disarmed it,
            # and the printer went on moving with nothing to stop it if the daemon died.
            ran = open_sim.executed
            armed = ran.index("M85 S60")
            disarmed = ran.index("M85 S0", armed)
            assert any(c.startswith("G1 X20") for c in ran[disarmed:])

            await app.jobs.submit(job("refused", "print", "disarm.gcode"), {"disarm.gcode": prog})
            held = await wait_job(app, "refused", JobState.HELD, JobState.DONE, JobState.FAILED)
            assert held.state == JobState.HELD
            reason = held.steps[0].reason
            assert reason.startswith("pre-flight: job content: line 2 'M85 S0': "), reason
            assert "dead-man" in reason and "(Marlin rule M85)" in reason
            # The same content dropped in the hot folder: the same check, the same hold.
            hot, clock = folder_for(app, tmp_path, hotfolder_settle_s=0.0)
            (hot.folder / "dropped.gcode").write_text("G28\nM85 S0\nG1 X30 F3000\n")
            clock.now = 1.0
            [outcome] = await hot.scan_once()
            assert outcome.accepted is not None, outcome
            dropped = await wait_job(app, outcome.accepted, JobState.HELD, JobState.DONE)
            assert dropped.steps[0].reason.startswith("pre-flight: job content: line 2 'M85 S0'")
            assert not any(c.startswith(("G28", "G1")) for c in guarded_sim.executed)


async def test_grbl_job_may_not_write_settings_or_build_info(tmp_path: Path) -> None:
    fast = {"time_factor": 50.0, "emulate_link": False, "build_info": "mill"}
    open_sim, guarded_sim = GrblSim(GrblSimOptions(**fast)), GrblSim(GrblSimOptions(**fast))
    prog = tmp_path / "hack.nc"
    prog.write_text("G21 G90\n$130=5000\n$I=hacked-by-job\nG0 X1\n")
    async with sims(open_sim, guarded_sim):
        mill = {"driver": "grbl", "backend": "real", "expected_build_info": "mill"}
        cell = make_cell(
            tmp_path,
            {
                "open": {
                    **mill,
                    "port": open_sim.endpoint,
                    "processes": ["mill-open"],
                    "program_check": False,
                    "job_policy": {"allow": ["$n=", "$I="]},
                },
                "guarded": {**mill, "port": guarded_sim.endpoint, "processes": ["mill"]},
            },
        )
        async with running(cell) as app:
            await app.jobs.submit(job("harm", "mill-open", "hack.nc"), {"hack.nc": prog})
            done = await wait_job(app, "harm", JobState.DONE, JobState.FAILED, JobState.HELD)
            assert done.state == JobState.DONE, done.reason
            # The harm: the job rewrote the X travel and the name the driver checks.
            assert open_sim.firmware.settings[130] == "5000.000"  # stored as GRBL does, 3 decimals
            assert open_sim.firmware.build_info == "HACKED-BY-JOB"  # normalised as GRBL does

            await app.jobs.submit(job("refused", "mill", "hack.nc"), {"hack.nc": prog})
            held = await wait_job(app, "refused", JobState.HELD, JobState.DONE, JobState.FAILED)
            assert held.state == JobState.HELD
            reason = held.steps[0].reason
            assert reason.startswith("pre-flight: job content: line 2 '$130=5000': "), reason
            assert "(GRBL rule $n=)" in reason
            assert guarded_sim.firmware.settings[130] != "5000.000"
            assert guarded_sim.firmware.build_info == "MILL"
            assert not any(c.startswith(("G21", "G0")) for c in guarded_sim.executed)
