"""The `frontend` permission: a front end acts for a user it verified, the user's roles apply."""

from __future__ import annotations

import pytest

from cellctl.access import FRONTEND, Access, AccessDenied, AccessSection


def policy(**section: object) -> Access:
    return Access.from_section(AccessSection.model_validate(section))


def test_a_front_end_acts_with_the_users_roles_only() -> None:
    a = policy(users={"panel": ["frontend"], "alice": ["planner"], "bob": ["viewer"]})
    a.check_on_behalf("panel", "alice", "submit")
    with pytest.raises(AccessDenied, match="user 'bob' lacks permission 'submit'"):
        a.check_on_behalf("panel", "bob", "submit")
    with pytest.raises(AccessDenied, match="user 'panel' lacks permission 'submit'"):
        a.check("panel", "submit")  # frontend alone does nothing in its own name
    with pytest.raises(AccessDenied, match="user 'alice' may not act on behalf of 'bob'"):
        a.check_on_behalf("alice", "bob", "jobs")
    with pytest.raises(AccessDenied, match="a command on a legacy topic may not act"):
        a.check_on_behalf(None, "alice", "submit")
    with pytest.raises(AccessDenied, match="is not a user name"):
        a.check_on_behalf("panel", "a/b", "submit")


def test_star_does_not_include_frontend_and_everyone_cannot_have_it() -> None:
    a = policy(
        roles={"boss": ["*"], "both": ["*", "frontend"]}, users={"x": ["boss"], "y": ["both"]}
    )
    assert not a.allowed("x", FRONTEND) and a.allowed("x", "submit")
    assert a.allowed("y", FRONTEND) and a.allowed("y", "estop")
    assert not policy(users={"z": ["admin"]}).allowed("z", FRONTEND)
    with pytest.raises(ValueError, match="'frontend' lets a client act as any user"):
        AccessSection.model_validate({"everyone": ["estop", "frontend"]})


def test_an_unverified_broker_voids_frontend() -> None:
    a = policy(users={"panel": ["frontend"], "alice": ["admin"]}).unverified()
    with pytest.raises(AccessDenied, match="the broker accepts anonymous clients"):
        a.check_on_behalf("panel", "alice", "jobs")
