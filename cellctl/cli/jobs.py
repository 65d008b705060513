"""The job commands of the `cellctl` command line: over MQTT, or local forms on the store.

When the cell's config has an `[mqtt]` section (or `--host/--port` are given)
the commands talk to the running cell over MQTT, as an MES would
(jobs_remote.py). `--local`, or a config without `[mqtt]`, selects the
local forms here: `cellctl jobs` reads the store directly (SQLite WAL lets it
read while the daemon writes); the commands that change something queue a
request in the store, the running daemon applies it through the same API the
MQTT commands use, and the command waits for the result (`--wait`). Without a
running daemon a request waits for the next start. `answer … fail|done` has
no MQTT command, so it is always local.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cellctl.cli import jobs_remote as remote
from cellctl.cli.common import add_config, add_json, json_mode, print_json
from cellctl.cli.jobs_view import recent, show
from cellctl.cli.mqtt import DEFAULT_TIMEOUT_S, add_target_options
from cellctl.cli.submission import build_submission
from cellctl.config import Cell, CellConfig, load, load_settings
from cellctl.errors import ConfigError, UsageError
from cellctl.jobs import repo
from cellctl.jobs.api import Repeat
from cellctl.jobs.programs import ProgramStore
from cellctl.jobs.spec import JobRejected
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


def wait_request(
    path: Path, request_id: int, bound_s: float
) -> tuple[bool, str | None, str | None]:
    """(done, error, result) after at most `bound_s` seconds of polling."""
    deadline = time.monotonic() + bound_s
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        while True:
            done, error, result = repo.request_result(conn, request_id)
            if done or time.monotonic() >= deadline:
                return done, error, result
            time.sleep(0.1)
    finally:
        conn.close()


def over_mqtt(args: argparse.Namespace) -> CellConfig | None:
    """The cell's settings when this command goes over MQTT; None for the local form."""
    if args.local:
        return None
    settings = load_settings(args.config)  # a ConfigError ends the command: exit 2
    if settings.mqtt is None and args.host is None and args.port is None:
        return None
    if args.wait <= 0:
        raise UsageError(f"{args.command}: over MQTT --timeout must be above 0 (or use --local)")
    return settings


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_jobs(args, settings)
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    if not path.exists():
        print(f"no store yet at {path}: the daemon has not run", file=sys.stderr)
        return EXIT_FAIL
    records = with_store(path, lambda c: repo.load_jobs(c, job_id=args.job))
    jobs = [j.as_dict() for j in records]
    if args.job is None and not args.all:
        jobs = recent(jobs)
    if args.job is not None and jobs:
        job_id = args.job
        jobs[0]["transitions"] = with_store(path, lambda c: repo.transitions(c, job_id))
    return show(jobs, args.job, args.json)


def _load(config: str) -> Cell | None:
    try:
        return load(config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return None


def _finish(path: Path, request_id: int, wait: float, what: str, job: bool = False) -> int:
    """Wait for a queued request and say how it went; `job`: name the job it made."""
    if wait <= 0:
        if json_mode():
            print_json({"what": what, "request": request_id, "done": False})
        else:
            print(f"{what}: queued (request {request_id})")
        return EXIT_OK
    done, error, result = wait_request(path, request_id, wait)
    if job and done and not error and result:
        what = f"job {result}"
    if json_mode():
        print_json(
            {"what": what, "request": request_id, "done": done, "error": error, "result": result}
        )
        return EXIT_FAIL if error else EXIT_OK
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


def _request(args: argparse.Namespace, kind: str, payload: dict[str, Any], what: str) -> int:
    """The local form: queue `kind` in the cell's store for the daemon, then wait for it."""
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    return _finish(path, queue_request(path, kind, payload), args.wait, what)


def cmd_submit(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_submit(args, settings)
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    try:
        spec, files = build_submission(cell.config.jobs, Path(args.file))
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
    payload = {
        "spec": spec.model_dump(mode="json"),
        "files": stored,
        "source": "cli",
        "repeat": submit_repeat(args).value,
    }
    return _finish(path, queue_request(path, "submit", payload), args.wait, f"job {spec.id}", True)


def submit_repeat(args: argparse.Namespace) -> Repeat:
    """The same file again: a new job with --again, else only once its job has ended."""
    return Repeat.ALWAYS if args.again else Repeat.ENDED


def cmd_reprint(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_reprint(args, settings)
    cell = _load(args.config)
    if cell is None:
        return EXIT_USAGE
    path = store_path(cell)
    rid = queue_request(path, "reprint", {"job": args.job, "source": "cli"})
    return _finish(path, rid, args.wait, f"reprint {args.job}", True)


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_cancel(args, settings)
    return _request(args, "cancel", {"job": args.job, "reason": args.reason}, f"cancel {args.job}")


def _pairs(values: list[str], command: str) -> dict[str, str] | None:
    out = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"cellctl {command}: expected KEY=VALUE, got {pair!r}", file=sys.stderr)
            return None
        out[key] = value
    return out


def cmd_answer_changeover(args: argparse.Namespace) -> int:
    """`changeover DEVICE K=V…`: a changeover request answered with what was loaded."""
    setup = _pairs(args.setup, "changeover")
    if setup is None:
        return EXIT_USAGE
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_answer_changeover(args, settings, setup)
    payload = {"device": args.device, "setup": setup, "merge": True}
    return _request(args, "setup", payload, f"changeover on {args.device}")


def cmd_answer(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_answer(args, settings)
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
    setup = {}
    for pair in args.values:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"cellctl setup: expected KEY=VALUE, got {pair!r}", file=sys.stderr)
            return EXIT_USAGE
        setup[key] = value
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_setup(args, settings, setup)
    payload = {"device": args.device, "setup": setup, "merge": args.merge}
    return _request(args, "setup", payload, f"setup of {args.device}")


def cmd_service(args: argparse.Namespace) -> int:
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_service(args, settings)
    payload = {"device": args.device, "in_service": args.state == "in", "note": args.note}
    return _request(args, "service", payload, service_what(args))


def service_what(args: argparse.Namespace) -> str:
    return f"{args.device} {'back in' if args.state == 'in' else 'out of'} service"


def cmd_bed_clear(args: argparse.Namespace) -> int:
    """The operator took the part off a printer's bed (issue 20: bed clearing gate)."""
    settings = over_mqtt(args)
    if settings is not None:
        return remote.cmd_bed_clear(args, settings)
    payload = {"device": args.device, "who": "operator (cli)"}
    return _request(args, "clear_bed", payload, f"bed of {args.device} cleared")


def add_commands(sub: Any) -> None:
    """Hook the job commands into the `cellctl` parser's subparsers."""

    def common(q: argparse.ArgumentParser) -> None:
        add_config(q, legacy=True)
        add_json(q)
        q.add_argument(
            "--local",
            action="store_true",
            help="use the cell's store on this machine instead of MQTT",
        )
        add_target_options(q)
        q.add_argument(
            "--timeout",
            "--wait",
            dest="wait",
            metavar="SECONDS",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            help="seconds to wait for the daemon's answer (local form: 0 queues only)",
        )

    p = sub.add_parser("jobs", help="list jobs (over MQTT, or from the store with --local)")
    common(p)
    p.add_argument("--job", default=None, help="show one job with its steps and history")
    p.add_argument("--all", action="store_true", help="include jobs finished over a day ago")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("submit", help="submit a TOML job file or a bare G-code file")
    common(p)
    p.add_argument("file")
    p.add_argument(
        "--again",
        action="store_true",
        help="a new job even while the same file's job is unfinished (a reprint)",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("reprint", help="run a job again: a new job <id>-r<n>, same programs")
    common(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_reprint)

    p = sub.add_parser("cancel", help="cancel a job")
    common(p)
    p.add_argument("job")
    p.add_argument("--reason", default="cancelled by operator (cli)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("answer", help="answer a held step: retry, resume, fail or done")
    common(p)
    p.add_argument("job")
    p.add_argument("index", type=int)
    p.add_argument("action", choices=["retry", "resume", "fail", "done"])
    p.add_argument("--line", type=int, default=None, help="resume from this line")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("changeover", help="answer a changeover request: what was loaded on DEVICE")
    common(p)
    p.add_argument("device")
    p.add_argument("setup", nargs="+", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_answer_changeover)

    p = sub.add_parser("setup", help="record what is loaded on a device")
    common(p)
    p.add_argument("device")
    p.add_argument("values", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--merge", action="store_true", help="change only the keys given")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("service", help="take a device out of service or put it back")
    common(p)
    p.add_argument("device")
    p.add_argument("state", choices=["in", "out"])
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_service)

    p = sub.add_parser("bed-clear", help="confirm a printer's bed clear (it may print again)")
    common(p)
    p.add_argument("device")
    p.set_defaults(func=cmd_bed_clear)
