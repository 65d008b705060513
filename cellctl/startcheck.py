"""What `cellctl run` needs beyond a well-typed config, checked the same way by `check`.

The config models say what each key may hold; this says whether the cell can
start with it: every secret resolves, the state directory and the hot folder
can be written, TLS files exist and parse, and each enabled device has what its
driver needs to start (`DriverOptions.start_problems`: a serial port or an
endpoint for backend "real", certificates that parse …). `cellctl check`
prints these problems, and `cellctl run` (and a reload) refuses a config with
any, in the same words, so that a config `check` passes is one `run` starts.

Warnings (a serial port that is not plugged in now) do not refuse: the
supervisor retries until the device appears. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cellctl.config import Cell
from cellctl.driver import Secret, SecretUnavailable, StartProblem
from cellctl.errors import ConfigError
from cellctl.store import DEFAULT_FILE, migrations


def secrets(obj: Any, path: str = "") -> Iterator[tuple[str, Secret]]:
    """Every Secret inside a config model, with its key path."""
    if isinstance(obj, Secret):
        yield path, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from secrets(getattr(obj, name), f"{path}.{name}" if path else name)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from secrets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from secrets(value, f"{path}.{i}")


def writable_dir(path: Path) -> str | None:
    """Why `path` cannot be (made) a directory this process writes in; None if it can."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _tls(mqtt: Any) -> list[StartProblem]:
    tls = mqtt.tls
    if tls is None:
        return []
    out = []
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        return [StartProblem("mqtt.tls.ca_file", f"cannot load {tls.ca_file}: {_why(exc)}")]
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            out.append(
                StartProblem(
                    "mqtt.tls.cert_file",
                    f"cannot load {tls.cert_file} with key {tls.key_file}: {_why(exc)}",
                )
            )
    return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _store_problem(db: Path) -> str | None:
    """Why the daemon could not open an existing store (read here without writing)."""
    if not os.access(db, os.R_OK | os.W_OK):
        return f"the store {db} is not writable by this user"
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"the store {db} cannot be read: {exc}"
    newest = max((n for n, _, _ in migrations()), default=0)
    if version > newest:
        return (
            f"the store {db} has schema version {version}, newer than this cellctl "
            f"knows ({newest}); upgrade cellctl"
        )
    return None


def problems(cell: Cell) -> list[StartProblem]:
    """Everything that would stop `cell` from starting, and warnings; keys in full."""
    out: list[StartProblem] = []
    state = cell.state_dir
    why = writable_dir(state)
    if why is not None:
        out.append(StartProblem("cell.state_dir", f"state directory {state}: {why}"))
    else:
        db = state / DEFAULT_FILE
        if db.exists():
            why = _store_problem(db)
            if why is not None:
                out.append(StartProblem("cell.state_dir", why))
    if cell.hotfolder is not None:
        why = writable_dir(cell.hotfolder)
        if why is not None:
            out.append(StartProblem("jobs.hotfolder", f"hot folder {cell.hotfolder}: {why}"))
    mqtt = cell.config.mqtt
    if mqtt is not None:
        out.extend(_tls(mqtt))
        if mqtt.embedded and importlib.util.find_spec("amqtt") is None:
            # Only needed when nothing listens there at start: that is network state.
            out.append(
                StartProblem(
                    "mqtt.embedded",
                    f"the amqtt package is not installed; the daemon needs it when no broker "
                    f"listens on {mqtt.host}:{mqtt.port} (pip install 'cellctl[demo]')",
                    warning=True,
                )
            )
    roots: list[tuple[str, Any]] = [("mqtt", cell.config.mqtt)]
    for dev in cell.devices.values():
        if not dev.common.enabled:
            continue
        where = f"devices.{dev.id}"
        roots.append((where, dev.options))
        for p in dev.options.start_problems(dev.common.backend):
            out.append(StartProblem(f"{where}.{p.key}", p.message, p.warning))
    for prefix, root in roots:
        for key, secret in secrets(root, prefix):
            try:
                secret.reveal()
            except SecretUnavailable as exc:
                out.append(StartProblem(key, str(exc)))
    return out


def line(cell: Cell, p: StartProblem) -> str:
    return f"{cell.source}: {p.key}: {p.message}"


def refuse(cell: Cell) -> list[str]:
    """Raise ConfigError naming every problem that stops `cell` from starting; returns
    the warnings as lines."""
    found = problems(cell)
    errors = [line(cell, p) for p in found if not p.warning]
    if errors:
        raise ConfigError(errors)
    return [line(cell, p) for p in found if p.warning]
