"""The job commands of the `cellctl` command line, local forms (they read and write the store).

`cellctl jobs` reads the store directly (SQLite WAL lets it read while the daemon
writes). The commands that change something (`submit`, `cancel`, `answer`,
`setup`, `service`) queue a request in the store; the running daemon applies
it through the same API the MQTT commands use, and the command waits for the
result (`--wait`). Without a running daemon a request waits for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cellctl.config import Cell, load
from cellctl.errors import ConfigError
from cellctl.jobs import repo
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.programs import ProgramStore
from cellctl.jobs.records import JobRecord
from cellctl.jobs.spec import (
    GCODE_SUFFIXES,
    JobRejected,
    JobSpec,
    StepSpec,
    parse_job_toml,
    safe_program_path,
)
from cellctl.store import DEFAULT_FILE, Store, transaction

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def store_path(cell: Cell) -> Path:
    return cell.state_dir / DEFAULT_FILE


def with_store(path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    async def go() -> T:
        async with Store(path) as store:
            return await store.call(fn)

    return asyncio.run(go())


def queue_request(path: Path, kind: str, payload: dict[str, Any]) -> int:
    """Queue a request for the daemon (durably); returns its id."""

    def add(conn: sqlite3.Connection) -> int:
        with transaction(conn):
            return repo.add_request(conn, kind, payload)

    return with_store(path, add)


def wait_request(path: Path, request_id: int, bound_s: float) -> tuple[bool, str | None]:
    """(done, error) after at most `bound_s` seconds of polling."""
    deadline = time.monotonic() + bound_s
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        while True:
            done, error = repo.request_result(conn, request_id)
            if done or time.monotonic() >= deadline:
                return done, error
            time.sleep(0.1)
    finally:
        conn.close()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _job_line(job: JobRecord) -> str:
    done = sum(1 for s in job.steps if s.state.value == "done")
    reason = f"  {job.reason}" if job.reason and job.reason != "accepted" else ""
    return (
        f"{job.id:<28} {job.state.value:<9} {done}/{len(job.steps):<4} "
        f"prio {job.priority:<4} {_when(job.created)}{reason}"
    )


def cmd_jobs(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    if not path.exists():
        print(f"no store yet at {path}: the daemon has not run", file=sys.stderr)
        return EXIT_FAIL
    jobs = with_store(path, lambda c: repo.load_jobs(c, job_id=args.job))
    if not args.all and args.job is None:
        jobs = [j for j in jobs if not j.state.terminal or time.time() - j.updated < 86400]
    if args.json:
        print(json.dumps([j.as_dict() for j in jobs], indent=2, default=str))
        return EXIT_OK
    if args.job is not None:
        if not jobs:
            print(f"no job {args.job!r}", file=sys.stderr)
            return EXIT_FAIL
        job = jobs[0]
        print(_job_line(job))
        for s in job.steps:
            line = f" last line {s.last_acked_line}" if s.last_acked_line is not None else ""
            print(
                f"  step {s.index:<3} {s.process:<10} {s.state.value:<9} "
                f"{s.device or '-':<10} attempt {s.attempt}{line}  {s.reason}"
            )
        for h in with_store(path, lambda c: repo.transitions(c, job.id)):
            what = "job" if h["idx"] is None else f"step {h['idx']}"
            print(
                f"  {_when(h['at'])} {what:<8} {h['from_state'] or '-'} → {h['to_state']}"
                f"  {h['reason']}"
            )
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(_job_line(job))
    return EXIT_OK


def _load(config: str) -> Cell | None:
    try:
        return load(config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return None


def _finish(path: Path, request_id: int, wait: float, what: str) -> int:
    if wait <= 0:
        print(f"{what}: queued (request {request_id})")
        return EXIT_OK
    done, error = wait_request(path, request_id, wait)
    if not done:
        print(
            f"{what}: queued (request {request_id}); the daemon did not apply it within "
            f"{wait:g} s (is it running?)"
        )
        return EXIT_OK
    if error:
        print(f"{what}: {error}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{what}: done")
    return EXIT_OK


def build_submission(cell: Cell, file: Path) -> tuple[JobSpec, dict[str, Path]]:
    """A TOML job file or a bare G-code file → (spec, program files). Raises JobRejected."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise JobRejected(f"{file}: cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    from cellctl.hotfolder import job_id_for

    if file.suffix.lower() in GCODE_SUFFIXES:
        info = scan_file(file)
        spec = JobSpec(
            id=job_id_for(file.stem, digest),
            route=(
                StepSpec(
                    process=cell.config.jobs.hotfolder_process,
                    program=file.name,
                    setup=info.requirements(),
                ),
            ),
        )
        return spec, {file.name: file}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(f"{file}: not UTF-8 text (byte {exc.start})") from None
    spec = parse_job_toml(text, str(file), job_id_for(file.stem, digest))
    files = {n: safe_program_path(file.parent, n) for n in spec.program_files()}
    return spec, files


def cmd_submit(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    try:
        spec, files = build_submission(cell, Path(args.file))
        programs = ProgramStore(cell.state_dir / "programs")
        stored = {}
        for name, p in files.items():
            try:
                stored[name] = programs.put_file(p)
            except OSError as exc:
                raise JobRejected(f"program {name!r}: cannot read {p}: {exc.strerror}") from None
    except JobRejected as exc:
        print(f"cellctl submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = store_path(cell)
    rid = queue_request(
        path,
        "submit",
        {"spec": spec.model_dump(mode="json"), "files": stored, "source": "cli"},
    )
    return _finish(path, rid, args.wait, f"job {spec.id}")


def cmd_cancel(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    rid = queue_request(path, "cancel", {"job": args.job, "reason": args.reason})
    return _finish(path, rid, args.wait, f"cancel {args.job}")


def cmd_answer(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    job = with_store(path, lambda c: repo.load_job(c, args.job))
    if job is None or not 0 <= args.index < len(job.steps):
        print(f"cellctl answer: no step {args.index} in job {args.job!r}", file=sys.stderr)
        return EXIT_FAIL
    step = job.steps[args.index]
    payload = {
        "job": args.job,
        "index": args.index,
        "action": args.action,
        "line": args.line,
        "attempt": step.attempt,  # answer the hold shown now, not a later one
    }
    rid = queue_request(path, "answer", payload)
    return _finish(path, rid, args.wait, f"{args.action} {step.key}")


def cmd_setup(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    setup = {}
    for pair in args.values:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"cellctl setup: expected KEY=VALUE, got {pair!r}", file=sys.stderr)
            return EXIT_USAGE
        setup[key] = value
    path = store_path(cell)
    payload = {"device": args.device, "setup": setup, "merge": args.merge}
    rid = queue_request(path, "setup", payload)
    return _finish(path, rid, args.wait, f"setup of {args.device}")


def cmd_service(args: argparse.Namespace) -> int:
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    payload = {"device": args.device, "in_service": args.state == "in", "note": args.note}
    rid = queue_request(path, "service", payload)
    return _finish(path, rid, args.wait, f"{args.device} {args.state} of service")


def add_commands(sub: Any) -> None:
    """Hook the job commands into the `cellctl` parser's subparsers."""
    p = sub.add_parser("jobs", help="list jobs from the local store")
    p.add_argument("config")
    p.add_argument("--job", default=None, help="show one job with its steps and history")
    p.add_argument("--all", action="store_true", help="include jobs finished over a day ago")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    def waitable(q: argparse.ArgumentParser) -> None:
        q.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the daemon")

    p = sub.add_parser("submit", help="submit a TOML job file or a bare G-code file")
    p.add_argument("config")
    p.add_argument("file")
    waitable(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("config")
    p.add_argument("job")
    p.add_argument("--reason", default="cancelled by operator (cli)")
    waitable(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("answer", help="answer a held step: retry, resume, fail or done")
    p.add_argument("config")
    p.add_argument("job")
    p.add_argument("index", type=int)
    p.add_argument("action", choices=["retry", "resume", "fail", "done"])
    p.add_argument("--line", type=int, default=None, help="resume from this line")
    waitable(p)
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("setup", help="record what is loaded on a device")
    p.add_argument("config")
    p.add_argument("device")
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--merge", action="store_true", help="change only the keys given")
    waitable(p)
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("service", help="take a device out of service or put it back")
    p.add_argument("config")
    p.add_argument("device")
    p.add_argument("state", choices=["in", "out"])
    p.add_argument("--note", default="")
    waitable(p)
    p.set_defaults(func=cmd_service)
