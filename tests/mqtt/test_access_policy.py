"""The role table, as pure logic: random configs and (user, role, command) triples."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.access import BUILTIN_ROLES, COMMAND_NAMES, Access, AccessDenied, AccessSection
from cellctl.command_payloads import COMMANDS
from cellctl.config import parse
from cellctl.errors import ConfigError

commands = st.sampled_from(sorted(COMMAND_NAMES))
role_names = st.sampled_from(["r1", "r2", "r3", *BUILTIN_ROLES])  # r*: new; others replace
user_names = st.sampled_from(["alice", "bob", "carol", "zoe", "müller", "a.b-c"])
role_tables = st.dictionaries(role_names, st.frozensets(commands, max_size=6), max_size=4)


def test_the_command_list_is_the_commands_modules() -> None:
    assert set(COMMANDS) == COMMAND_NAMES


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    roles=role_tables,
    everyone=st.none() | st.frozensets(commands, max_size=3),
    user=user_names,
    command=commands,
)
def test_allowed_iff_the_role_table_says_so(
    data: st.DataObject,
    roles: dict[str, frozenset[str]],
    everyone: frozenset[str] | None,
    user: str,
    command: str,
) -> None:
    known = st.sampled_from(sorted({*BUILTIN_ROLES, *roles}))
    users = data.draw(st.dictionaries(user_names, st.lists(known, max_size=3), max_size=4))
    section = AccessSection.model_validate(
        {
            "roles": {r: sorted(c) for r, c in roles.items()},
            "users": users,
            **({"everyone": sorted(everyone)} if everyone is not None else {}),
        }
    )
    access = Access.from_section(section)
    table = {**BUILTIN_ROLES, **roles}
    open_to_all = everyone if everyone is not None else {"estop"}
    expected = command in open_to_all or any(command in table[r] for r in users.get(user, []))
    assert access.allowed(user, command) == expected
    if expected:
        access.check(user, command)
    else:
        with pytest.raises(AccessDenied, match=f"lacks permission '{command}'"):
            access.check(user, command)
    # Without a verified broker, or on a legacy topic, only `everyone` is left.
    assert access.unverified().allowed(user, command) == (command in open_to_all)
    assert access.allowed(None, command) == (command in open_to_all)


def test_defaults_deny_all_but_estop_and_allow_anonymous_opens_everything() -> None:
    closed = Access.from_section(None)
    assert closed.commands_of("anyone") == {"estop"}
    demo = Access.from_section(AccessSection(allow_anonymous=True))
    # Everything but the privileged maintenance lines, which need a role even there.
    assert demo.commands_of("anyone") == COMMAND_NAMES - {"maintain"}
    assert not demo.allowed("anyone", "maintain")
    tech = Access.from_section(AccessSection(allow_anonymous=True, users={"t": ("maintenance",)}))
    assert tech.allowed("t", "maintain")
    assert Access.from_section(AccessSection(everyone=())).commands_of("x") == frozenset()
    star = Access.from_section(AccessSection(roles={"all": ("*",)}, users={"u": ("all",)}))
    assert star.commands_of("u") == COMMAND_NAMES


def _problems(text: str) -> list[str]:
    src = Path("cell.toml")
    with pytest.raises(ConfigError) as err:
        parse(src, tomllib.loads('[cell]\nname = "c"\n' + text))
    return err.value.problems


@pytest.mark.parametrize("name", ["alice/submit", "a+b", "a#", "", "tab\there"])
def test_user_names_that_are_not_one_topic_level_are_refused(name: str) -> None:
    (problem,) = _problems(f'[access.users]\n"{name}" = ["operator"]\n')
    assert problem.startswith("cell.toml: access.users") and "one MQTT topic level" in problem


def test_unknown_commands_and_roles_are_refused_by_name() -> None:
    (p,) = _problems('[access.roles]\nops = ["pause", "launch"]\n')
    assert "access.roles" in p and "unknown command 'launch'" in p
    (p,) = _problems('[access.users]\nalice = ["wizard"]\n')
    assert "unknown role 'wizard'" in p
    (p,) = _problems('[access]\neveryone = ["estop", "nuke"]\n')
    assert "unknown command 'nuke'" in p
    (p,) = _problems("[access]\nallow_anonymus = true\n")
    assert "access.allow_anonymus: unknown key" in p


def test_a_hot_folder_user_listed_without_submit_is_refused() -> None:
    (p,) = _problems('[jobs]\nhotfolder = "hot"\n[access.users]\nhotfolder = ["viewer"]\n')
    assert "hot folder submits as user 'hotfolder'" in p and "do not allow submit" in p
    for ok in (
        '[jobs]\nhotfolder = "hot"\n',  # not listed: the folder's permissions guard it
        '[jobs]\nhotfolder = "hot"\n[access.users]\nhotfolder = ["planner"]\n',
        '[jobs]\nhotfolder = "hot"\n[access]\nhotfolder_user = "hf"\n'
        '[access.users]\nhf = ["admin"]\n',
    ):
        cell = parse(Path("cell.toml"), tomllib.loads('[cell]\nname = "c"\n' + ok))
        assert cell.config.access.hotfolder_may_submit()
    # The unlisted hot folder user's grant is not a broker user's: "hotfolder" over MQTT
    # gets only what everyone gets.
    assert not Access.from_section(AccessSection()).allowed("hotfolder", "submit")


def test_cellctl_check_prints_who_may_do_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellctl import cli

    cfg = tmp_path / "cell.toml"
    cfg.write_text(
        '[cell]\nname = "c"\n[access.users]\nalice = ["operator"]\nmes = ["planner"]\nnobody = []\n'
    )
    assert cli.main(["check", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "everyone       estop\n" in out
    assert (
        "mes            + cancel, devices, jobs, programs, put_program, reprint, set_priority,"
        " submit  [planner]"
    ) in out
    assert "nobody         (nothing more)  [no role]" in out
    cfg.write_text('[cell]\nname = "c"\n[access.users]\n"alice/submit" = ["admin"]\n')
    assert cli.main(["check", "-c", str(cfg)]) == 2
    assert "one MQTT topic level" in capsys.readouterr().err


def test_the_documented_role_table_is_the_built_in_one() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", text, re.M)
    documented = {
        role: COMMAND_NAMES if cmds == "every command" else set(re.findall(r"`(\w+)`", cmds))
        for role, cmds in rows
        if role in BUILTIN_ROLES
    }
    assert documented == {r: set(c) for r, c in BUILTIN_ROLES.items()}


async def test_while_the_broker_is_unchecked_only_open_commands_run(tmp_path: Path) -> None:
    """The start check could not reach the broker: a command that depends on who sent it
    waits for the check; an estop (open to everyone) does not."""
    import asyncio

    from cellctl.commands import CommandHandler
    from cellctl.store import Store
    from cellctl.telemetry.link import Incoming
    from cellctl.telemetry.topics import Topics

    topics = Topics("c")
    replies: list[str] = []
    async with Store(tmp_path / "cellctl.db") as store:
        handler = CommandHandler(
            topics,
            store,
            lambda: {},
            lambda out, corr: replies.append(out.topic),
            lambda rec: None,
            access=Access.from_section(AccessSection(users={"al": ("operator",)})),
        )
        handler.access_known.clear()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(handler.run())
            handler.on_message(Incoming(topics.command("al", "jobs"), b"{}"))
            handler.on_message(Incoming(topics.command("al", "estop"), b"{}"))
            async with asyncio.timeout(10):
                while not replies:
                    await asyncio.sleep(0.01)
            assert replies == [topics.reply("al", "estop")]
            handler.access_known.set()
            async with asyncio.timeout(10):
                while len(replies) < 2:
                    await asyncio.sleep(0.01)
            assert replies[1] == topics.reply("al", "jobs")
            task.cancel()
