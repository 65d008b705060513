"""sd_notify datagrams on a real unix socket, including the abstract namespace."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cellctl.notify import Notifier, watchdog_interval


def test_datagrams_reach_a_bound_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        srv.settimeout(2)
        n = Notifier(str(path))
        assert n.ready("3 devices: 3 idle")
        assert srv.recv(256) == b"READY=1\nSTATUS=3 devices: 3 idle"
        assert n.watchdog() and srv.recv(256) == b"WATCHDOG=1"
        assert n.stopping() and srv.recv(256) == b"STOPPING=1"
        n.close()


def test_abstract_socket() -> None:
    name = f"cellctl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)
        srv.settimeout(2)
        n = Notifier("@" + name)
        assert n.status("hello") and srv.recv(64) == b"STATUS=hello"
        n.close()


def test_disabled_without_socket_and_survives_a_gone_socket(tmp_path: Path) -> None:
    assert not Notifier("").enabled
    assert Notifier("").ready("x") is False
    assert Notifier(str(tmp_path / "gone.sock")).ready("x") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_a_reader_that_stops_reading_drops_statuses_instead_of_blocking(tmp_path: Path) -> None:
    # Seen in benchmarks/footprint.py: a 50-printer cell's STATUS lines filled the queue
    # of a socket nobody read, and a blocking send stopped the daemon's event loop.
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        n = Notifier(str(path))
        sent = [n.status(f"{i} devices") for i in range(1000)]  # would hang if blocking
        assert sent[0] is True
        assert False in sent
        srv.settimeout(2)
        assert srv.recv(4096) == b"STATUS=0 devices"
