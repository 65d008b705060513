"""API keys: made once, stored hashed, listed, revoked; the CLI around them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from panel_rig import cellctl, demo_config

from cellctl.errors import UsageError
from cellctl.panel.apikeys import KeyFileError, KeyStore


def test_keys_are_hashed_verified_and_revoked(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    alice, key_a = store.add("alice")
    _, key_b = store.add("bob")
    text = (tmp_path / "keys.json").read_text()
    assert key_a not in text and key_b not in text  # only digests are kept
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert store.verify(key_a) == "alice" and store.verify(key_b) == "bob"
    assert store.verify(key_a + "x") is None and store.verify("") is None
    assert [r.user for r in store.records()] == ["alice", "bob"]
    store.revoke(alice.id)
    assert store.verify(key_a) is None and store.verify(key_b) == "bob"
    with pytest.raises(UsageError, match="no API key"):
        store.revoke(alice.id)
    with pytest.raises(UsageError, match="user name"):
        store.add("a/b")


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(KeyFileError, match=r"keys\.json: not a key file"):
        KeyStore(tmp_path / "keys.json").verify("ck_1_2")


def test_apikey_cli_shows_a_key_once_lists_and_revokes(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path, 1883)
    done = cellctl("apikey", "add", "bob", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    header, key = done.stdout.splitlines()[:2]
    key_id = header.split()[2]
    assert key.startswith(f"ck_{key_id}_")
    assert "may not submit jobs" in done.stderr  # bob is a viewer
    listed = cellctl("apikey", "list", "-c", str(cfg))
    assert listed.returncode == 0 and key_id in listed.stdout and "bob" in listed.stdout
    assert key not in listed.stdout
    store = KeyStore(tmp_path / "state" / "panel-keys.json")  # the cell's state directory
    assert store.verify(key) == "bob"
    gone = cellctl("apikey", "revoke", key_id, "-c", str(cfg))
    assert gone.returncode == 0 and f"revoked API key {key_id}" in gone.stdout
    assert store.verify(key) is None
    again = cellctl("apikey", "revoke", key_id, "-c", str(cfg))
    assert again.returncode == 2 and "no API key" in again.stderr
