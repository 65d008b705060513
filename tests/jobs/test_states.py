"""Job and step state machines: nothing outside the tables can happen, stored or not."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs.conftest import REGISTRY, make_cell

from cellctl.errors import InvalidTransition
from cellctl.events import EventBus
from cellctl.jobs import repo
from cellctl.jobs.records import JobRecord, StepRecord
from cellctl.jobs.service import JobService
from cellctl.jobs.states import (
    JOB_TRANSITIONS,
    STEP_TRANSITIONS,
    derive_job_state,
    job_transition,
    step_transition,
)
from cellctl.model import JobState, ProgramKind, StepState
from cellctl.store import Store, transaction
from cellctl.supervisor import Supervisor


def test_tables_cover_every_state_and_terminals_are_absorbing() -> None:
    assert set(STEP_TRANSITIONS) == set(StepState)
    assert set(JOB_TRANSITIONS) == set(JobState)
    for s in StepState:
        assert (not STEP_TRANSITIONS[s]) == s.terminal
    for j in JobState:
        assert (not JOB_TRANSITIONS[j]) == j.terminal


@pytest.mark.parametrize(("a", "b"), list(itertools.product(StepState, StepState)))
def test_every_step_pair(a: StepState, b: StepState) -> None:
    if b in STEP_TRANSITIONS[a]:
        assert step_transition(a, b) == b
    else:
        with pytest.raises(InvalidTransition):
            step_transition(a, b)


@pytest.mark.parametrize(("a", "b"), list(itertools.product(JobState, JobState)))
def test_every_job_pair(a: JobState, b: JobState) -> None:
    if b in JOB_TRANSITIONS[a]:
        assert job_transition(a, b) == b
    else:
        with pytest.raises(InvalidTransition):
            job_transition(a, b)


@given(
    n=st.integers(1, 4),
    moves=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(StepState))), max_size=40),
    cancel_at=st.one_of(st.none(), st.integers(0, 40)),
)
def test_derived_job_states_follow_the_job_table(
    n: int, moves: list[tuple[int, StepState]], cancel_at: int | None
) -> None:
    """Whatever allowed step moves happen, the job state they imply moves by the job table."""
    steps = [StepState.QUEUED] * n
    job = JobState.QUEUED
    for i, (idx, target) in enumerate(moves):
        idx %= n
        if target in STEP_TRANSITIONS[steps[idx]]:
            steps[idx] = target
        derived = derive_job_state(steps, cancelled=cancel_at is not None and i >= cancel_at)
        if job.terminal:
            continue  # the service freezes a finished job's state
        if derived != job:
            job = job_transition(job, derived)


# --- through the service: a stored history only ever holds allowed transitions ---


def _job(job_id: str, n: int) -> JobRecord:
    steps = tuple(StepRecord(job_id, i, 0, i, "print", ProgramKind.NONE) for i in range(n))
    return JobRecord(job_id, 0, 1, 0, None, "test", JobState.QUEUED, "", 0.0, 0.0, steps)


_counter = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.integers(1, 3),
    moves=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(list(StepState))), max_size=15),
)
def test_service_refuses_and_never_stores_a_forbidden_transition(
    state_dir: Path, n: int, moves: list[tuple[int, StepState]]
) -> None:
    asyncio.run(_drive(state_dir, n, moves))


async def _drive(state_dir: Path, n: int, moves: list[tuple[int, StepState]]) -> None:
    cell = make_cell(state_dir, {})
    async with Store(state_dir / "cellctl.db") as store:
        bus = EventBus()
        supervisor = Supervisor({}, REGISTRY, bus.publish, cell.config.supervisor)
        service = JobService(store, supervisor, bus, lambda: cell)
        job = _job(f"j{next(_counter)}", n)
        job = job.replace(seq=next(_counter) + 1)

        def insert(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                repo.insert_job(conn, job, "{}")

        await store.call(insert)
        service._jobs[job.id] = job
        for idx, target in moves:
            idx %= n
            before = service._jobs[job.id]
            current = before.steps[idx].state
            if target == current:
                continue  # not a transition: nothing to refuse or record
            if target in STEP_TRANSITIONS[current]:
                await service._change(job.id, {idx: {"state": target}})
            else:
                with pytest.raises(InvalidTransition):
                    await service._change(job.id, {idx: {"state": target}})
                assert service._jobs[job.id] == before
        stored = await store.call(lambda c: repo.load_job(c, job.id))
        history = await store.call(lambda c: repo.transitions(c, job.id))
    assert stored is not None
    assert [s.state for s in stored.steps] == [s.state for s in service._jobs[job.id].steps]
    assert stored.state == service._jobs[job.id].state
    for h in history:
        if h["from_state"] is None:
            continue
        if h["idx"] is None:
            assert JobState(h["to_state"]) in JOB_TRANSITIONS[JobState(h["from_state"])]
        else:
            assert StepState(h["to_state"]) in STEP_TRANSITIONS[StepState(h["from_state"])]


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)
