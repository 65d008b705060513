"""The allowed transitions of jobs and steps, as explicit tables.

Every stored change of state goes through `step_transition` / `job_transition`,
so that a transition outside these tables cannot happen: it raises
InvalidTransition before anything is written.

A job's state follows from its steps (`derive_job_state`); the job table is
still checked, so a derivation bug cannot produce an impossible history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cellctl.errors import InvalidTransition
from cellctl.model import JobState, StepState

S = StepState
J = JobState

STEP_TRANSITIONS: Mapping[StepState, frozenset[StepState]] = {
    # QUEUED → FAILED: no device could ever take it (rejected), or an earlier step failed.
    S.QUEUED: frozenset({S.STARTING, S.CANCELLED, S.FAILED}),
    # STARTING → QUEUED: the device went away (or the daemon died) before anything moved.
    S.STARTING: frozenset({S.RUNNING, S.HELD, S.QUEUED, S.CANCELLED, S.FAILED}),
    # RUNNING → QUEUED: restarted by a device's recovery policy ("restart").
    S.RUNNING: frozenset({S.DONE, S.FAILED, S.HELD, S.CANCELLED, S.QUEUED}),
    # HELD → QUEUED: the operator said retry or resume; HELD → DONE: the operator
    # confirmed the device finished it before the daemon could record that.
    S.HELD: frozenset({S.QUEUED, S.FAILED, S.CANCELLED, S.DONE}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    J.QUEUED: frozenset({J.ACTIVE, J.HELD, J.DONE, J.FAILED, J.CANCELLED}),
    # ACTIVE → QUEUED: the only started step went back to the queue untouched.
    J.ACTIVE: frozenset({J.QUEUED, J.HELD, J.DONE, J.FAILED, J.CANCELLED}),
    J.HELD: frozenset({J.QUEUED, J.ACTIVE, J.DONE, J.FAILED, J.CANCELLED}),
    J.DONE: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
}


def step_transition(current: StepState, new: StepState) -> StepState:
    if new not in STEP_TRANSITIONS[current]:
        raise InvalidTransition(f"a step cannot go from {current} to {new}")
    return new


def job_transition(current: JobState, new: JobState) -> JobState:
    if new not in JOB_TRANSITIONS[current]:
        raise InvalidTransition(f"a job cannot go from {current} to {new}")
    return new


def derive_job_state(steps: Iterable[StepState], cancelled: bool = False) -> JobState:
    """The job state its steps imply. `cancelled`: the job itself was cancelled."""
    states = list(steps)
    if cancelled:
        return J.CANCELLED
    if any(s == S.FAILED for s in states):
        return J.FAILED
    if states and all(s == S.DONE for s in states):
        return J.DONE
    if any(s == S.CANCELLED for s in states):
        return J.CANCELLED
    if any(s == S.HELD for s in states):
        return J.HELD
    if all(s == S.QUEUED for s in states):
        return J.QUEUED
    return J.ACTIVE
