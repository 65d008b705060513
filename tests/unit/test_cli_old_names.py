"""The flat module names of the last release import as the package modules they became."""

from __future__ import annotations

import importlib

import pytest

from cellctl.cli_old_names import OLD_NAMES


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_name_is_the_new_module(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(OLD_NAMES[old])


def test_a_patch_through_the_old_name_reaches_the_new_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cellctl import cli_jobs
    from cellctl.cli import jobs

    monkeypatch.setattr(cli_jobs, "DEFAULT_FILE", "patched.db")
    assert jobs.DEFAULT_FILE == "patched.db"


def test_unknown_names_still_fail() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("cellctl.cli_nope")
