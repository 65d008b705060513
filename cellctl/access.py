"""Who may command the cell: roles as sets of commands, users with roles, deny by default.

The user is the one the broker vouched for: commands arrive on
`<prefix>/<cell>/cmd/<user>/<command>` and the broker's ACL lets each client
write only under its own user name (docs/mqtt.md). Nothing in a payload or
in MQTT 5 user properties names the user, with one exception: a user with the
`frontend` permission (a front end such as `cellctl panel` that verified its
own users) may name another in `on_behalf_of`, whose roles then decide.

Without an `[access]` section, anybody may `estop` and nobody may do
anything else. `allow_anonymous = true` (the demo) means the broker may let
anyone in, so the user in a topic proves nothing: then every command is open
to everybody unless `everyone` says otherwise.

This module is pure: no I/O, no asyncio, importable by the config parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellctl.errors import CellError

# Every command the cell understands (cellctl.command_payloads.COMMANDS holds their schemas;
# a test keeps the two equal). Here so that the config can be checked without it.
COMMAND_NAMES: frozenset[str] = frozenset(
    {
        "pause",
        "resume",
        "stop",
        "reset",
        "estop",
        "out_of_service",
        "into_service",
        "submit",
        "reprint",
        "cancel",
        "answer",
        "set_setup",
        "resume_from",
        "answer_hold",
        "jobs",
        "put_program",
        "maintain",
        "devices",
        "set_priority",
        "programs",
    }
)
ALL = "*"
# Not a command: the right to send commands for another user, who is named by the
# command's `on_behalf_of` (a front end such as `cellctl panel` that verified that
# user itself). "*" does not include it: a role must name it.
FRONTEND = "frontend"
PERMISSION_NAMES: frozenset[str] = COMMAND_NAMES | {FRONTEND}
# Commands that can change a machine beyond what any job may (cellctl/maintenance.py):
# never open to everybody by default, not even on a broker that lets anyone in.
PRIVILEGED: frozenset[str] = frozenset({"maintain"})

# A user name is one MQTT topic level. '/' would let `alice/submit` pass for alice under
# a `cmd/%u/#` ACL; '+' and '#' are wildcards (Mosquitto refuses %u for them anyway).
USER_PATTERN = r"^[^/+#\x00-\x1f\x7f]{1,128}$"
ROLE_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"

# Roles a config may use without defining them; a role of the same name in
# [access.roles] replaces the built-in one.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = {
    "viewer": frozenset({"jobs", "devices", "programs"}),
    "operator": frozenset(
        {
            "jobs",
            "devices",
            "programs",
            "pause",
            "resume",
            "stop",
            "reset",
            "answer",
            "answer_hold",
            "resume_from",
        }
    ),
    "planner": frozenset(
        {
            "jobs",
            "devices",
            "programs",
            "submit",
            "reprint",
            "cancel",
            "set_priority",
            "put_program",
        }
    ),
    "maintenance": frozenset(
        {
            "jobs",
            "devices",
            "programs",
            "reset",
            "set_setup",
            "out_of_service",
            "into_service",
            "maintain",
        }
    ),
    "admin": COMMAND_NAMES,
    "frontend": frozenset({FRONTEND}),
}
DEFAULT_EVERYONE: tuple[str, ...] = ("estop",)

RoleName = Annotated[str, Field(pattern=ROLE_PATTERN)]


class AccessDenied(CellError):
    """A command the user's roles do not allow; the message names the missing permission."""


def _check_commands(commands: Iterable[str], where: str) -> None:
    unknown = sorted(set(commands) - PERMISSION_NAMES - {ALL})
    if unknown:
        raise ValueError(
            f"{where}: unknown command {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(COMMAND_NAMES))}, '*' for all, or {FRONTEND!r}"
        )


def valid_user(name: str) -> bool:
    return re.match(USER_PATTERN, name) is not None


class AccessSection(BaseModel):
    """`[access]`: roles, users and what everybody may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # True: the broker may accept clients without credentials (the demo, a bench).
    # The daemon then starts on such a broker (with a warning) and `everyone`
    # defaults to every command, since the user in a topic proves nothing.
    allow_anonymous: bool = False
    # Commands any user may send, whatever their roles. Default: ["estop"], or
    # every command but `maintain` with allow_anonymous. [] takes even estop away
    # from users without a role.
    everyone: tuple[str, ...] | None = None
    # Role name → commands ("*": all). Built-in: viewer, operator, planner,
    # maintenance, admin (docs/mqtt.md); a role defined here replaces one of them.
    roles: dict[RoleName, tuple[str, ...]] = Field(default_factory=dict)
    # Broker user name → roles.
    users: dict[str, tuple[RoleName, ...]] = Field(default_factory=dict)
    # The hot folder has no identity: its jobs are submitted as this user. Listed in
    # `users`, its roles must allow submit; not listed, it may submit (whoever can write
    # to the folder could always queue jobs: the folder's permissions guard it). That
    # grant is the hot folder's only: a broker user of the same name gets nothing by it.
    hotfolder_user: str = Field(default="hotfolder", pattern=USER_PATTERN)

    def hotfolder_may_submit(self) -> bool:
        if self.hotfolder_user not in self.users:
            return True
        return Access.from_section(self).allowed(self.hotfolder_user, "submit")

    @field_validator("everyone")
    @classmethod
    def _everyone(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            _check_commands(v, "everyone")
            if FRONTEND in v:
                raise ValueError(
                    f"everyone: {FRONTEND!r} lets a client act as any user; give it to the "
                    "front end's own user in [access.users] instead"
                )
        return v

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for role, commands in v.items():
            _check_commands(commands, f"role {role!r}")
        return v

    @field_validator("users")
    @classmethod
    def _users(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for user in v:
            if not valid_user(user):
                raise ValueError(
                    f"user name {user!r}: a user name is one MQTT topic level: "
                    "1-128 characters, none of '/', '+', '#' or control characters"
                )
        return v

    @model_validator(mode="after")
    def _known_roles(self) -> AccessSection:
        known = set(BUILTIN_ROLES) | set(self.roles)
        for user, roles in self.users.items():
            missing = sorted(set(roles) - known)
            if missing:
                raise ValueError(
                    f"users.{user}: unknown role {', '.join(map(repr, missing))}; "
                    f"known: {', '.join(sorted(known))}"
                )
        return self


def _expand(commands: Iterable[str]) -> frozenset[str]:
    names = frozenset(commands)
    return COMMAND_NAMES | (names & {FRONTEND}) if ALL in names else names


@dataclass(frozen=True)
class Access:
    """The policy the command handler asks before anything else."""

    roles: Mapping[str, frozenset[str]]
    users: Mapping[str, tuple[str, ...]]
    everyone: frozenset[str]
    allow_anonymous: bool = False
    # False once the broker was found to accept anonymous clients against the config:
    # then no user name can be trusted and only `everyone` remains.
    verified: bool = True

    @classmethod
    def from_section(cls, section: AccessSection | None) -> Access:
        section = section or AccessSection()
        roles = dict(BUILTIN_ROLES)
        roles.update({name: _expand(cmds) for name, cmds in section.roles.items()})
        if section.everyone is not None:
            everyone = _expand(section.everyone)
        elif section.allow_anonymous:
            everyone = COMMAND_NAMES - PRIVILEGED
        else:
            everyone = frozenset(DEFAULT_EVERYONE)
        return cls(roles, dict(section.users), everyone, section.allow_anonymous)

    def unverified(self) -> Access:
        """The policy when the broker lets anyone claim any user name."""
        return Access(self.roles, self.users, self.everyone, self.allow_anonymous, False)

    def commands_of(self, user: str | None) -> frozenset[str]:
        """What `user` may do; None is a command without a user (legacy topics)."""
        if user is None or not self.verified:
            return self.everyone
        granted = set(self.everyone)
        for role in self.users.get(user, ()):
            granted |= self.roles.get(role, frozenset())
        return frozenset(granted)

    def allowed(self, user: str | None, command: str) -> bool:
        return command in self.commands_of(user)

    def check(self, user: str | None, command: str) -> None:
        """Raises AccessDenied, naming the permission that is missing."""
        if self.allowed(user, command):
            return
        if user is None:
            raise AccessDenied(
                f"{command} needs a user: commands on the legacy topics may only "
                f"{self._list(self.everyone)}; use <prefix>/<cell>/cmd/<user>/{command}"
            )
        if not self.verified:
            raise AccessDenied(
                f"permission {command!r} refused: the broker accepts anonymous clients, so "
                f"user {user!r} is not verified; only {self._list(self.everyone)} is open"
            )
        roles = self.users.get(user, ())
        granting = sorted(r for r, cmds in self.roles.items() if command in cmds)
        has = f"has roles {', '.join(roles)}" if roles else "has no role"
        via = f" (a role with it: {', '.join(granting)})" if granting else ""
        raise AccessDenied(f"user {user!r} lacks permission {command!r}: {has}{via}")

    def check_on_behalf(self, via: str | None, user: str, command: str) -> None:
        """`via` sends `command` for `user`: via needs `frontend`, user the command.

        Raises AccessDenied naming who lacks what."""
        if via is None or not self.verified or not self.allowed(via, FRONTEND):
            who = "a command on a legacy topic" if via is None else f"user {via!r}"
            why = "" if self.verified else " (the broker accepts anonymous clients)"
            raise AccessDenied(
                f"{who} may not act on behalf of {user!r}: permission {FRONTEND!r} "
                f"refused{why}; give the front end's user the role {FRONTEND!r}"
            )
        if not valid_user(user):
            raise AccessDenied(f"on_behalf_of {user!r} is not a user name")
        self.check(user, command)

    @staticmethod
    def _list(commands: Iterable[str]) -> str:
        names = sorted(commands)
        return ", ".join(names) if names else "nothing"

    def describe(self) -> list[str]:
        """Who may do what, for `cellctl check`."""
        lines = []
        if self.allow_anonymous:
            lines.append(
                "  allow_anonymous = true: the broker may let anyone in, so user names "
                "are claims, not identities"
            )
        lines.append(f"  {'everyone':<14} {self._list(self.everyone)}")
        for user in sorted(self.users):
            extra = sorted(self.commands_of(user) - self.everyone)
            roles = ", ".join(self.users[user]) or "no role"
            more = f"+ {self._list(extra)}" if extra else "(nothing more)"
            lines.append(f"  {user:<14} {more}  [{roles}]")
        if not self.users:
            lines.append("  (no users in [access.users])")
        return lines
