"""The job commands of `cellctl` over MQTT: the same commands and replies an MES uses.

`jobs`, `submit`, `reprint`, `cancel`, `setup`, `service`, and `answer … retry|resume`
each become one command (docs/mqtt.md) with an MQTT 5 reply; what they print
matches the local forms in jobs.py. `answer … fail|done` has no MQTT
command and stays local (jobs.py decides).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cellctl.cli.common import json_mode, print_json
from cellctl.cli.jobs_view import recent, show
from cellctl.cli.mqtt import Remote, target_from
from cellctl.cli.submission import build_submission, submit_command, upload_large_programs
from cellctl.config import CellConfig
from cellctl.jobs.spec import JobRejected
from cellctl.program_upload import UploadFailed

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PAGE = 500  # jobs asked for per `jobs` command (the cell allows up to jobs_page_max)
Result = Any  # a reply's `result`: a job, a device, a list of jobs


def send(
    args: argparse.Namespace, settings: CellConfig, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    remote = Remote.connect(target_from(args, settings), args.wait)
    try:
        return remote.command(name, body)
    finally:
        remote.close()


def finish(reply: Mapping[str, Any], what: str, detail: Callable[[Result], str]) -> int:
    if json_mode() and reply.get("outcome") == "accepted":
        print_json(reply.get("result"))
        return EXIT_OK
    if reply.get("outcome") == "accepted":
        print(f"{what}: {detail(reply.get('result'))}")
        return EXIT_OK
    print(f"{what}: rejected: {reply.get('reason') or 'no reason given'}", file=sys.stderr)
    return EXIT_FAIL


def _job_state(result: Result) -> str:
    return f"accepted (job {result.get('state')})" if isinstance(result, dict) else "accepted"


def cmd_jobs(args: argparse.Namespace, settings: CellConfig) -> int:
    if args.job is not None:
        reply = send(args, settings, "jobs", {"job": args.job})
        jobs = list(reply.get("result") or [])
    else:
        reply, jobs = _all_pages(args, settings)
    if reply.get("outcome") != "accepted":
        print(f"cellctl jobs: {reply.get('reason')}", file=sys.stderr)
        return EXIT_FAIL
    if not args.all and args.job is None:
        jobs = recent(jobs)
    return show(jobs, args.job, args.json)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _all_pages(args: argparse.Namespace, settings: CellConfig) -> tuple[dict[str, Any], list[Any]]:
    """Every job, a page at a time (the cell answers `jobs` in pages)."""
    remote = Remote.connect(target_from(args, settings), args.wait)
    jobs: list[Any] = []
    try:
        body: dict[str, Any] = {"limit": PAGE}
        while True:
            reply = remote.command("jobs", body)
            if reply.get("outcome") != "accepted":
                return reply, jobs
            jobs += list(reply.get("result") or [])
            page = reply.get("page") or {}
            if not page.get("more"):
                return reply, jobs
            body = {"limit": PAGE, "after": page.get("after")}
    finally:
        remote.close()


def cmd_submit(args: argparse.Namespace, settings: CellConfig) -> int:
    try:
        spec, files = build_submission(settings.jobs, Path(args.file))
        body = submit_command(spec, files)
    except JobRejected as exc:
        print(f"cellctl submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    body["repeat"] = "always" if args.again else "ended"
    remote = Remote.connect(target_from(args, settings), args.wait)
    try:
        body = upload_large_programs(body, remote.command, _say)
        reply = remote.command("submit", body)
    except UploadFailed as exc:
        print(f"cellctl submit: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        remote.close()
    return finish(reply, f"job {_made(reply, spec.id)}", _job_state)


def cmd_reprint(args: argparse.Namespace, settings: CellConfig) -> int:
    reply = send(args, settings, "reprint", {"job": args.job})
    return finish(reply, f"job {_made(reply, args.job)}", _job_state)


def _made(reply: Mapping[str, Any], default: str) -> str:
    """The id of the job a reply describes (a reprint has a new one)."""
    result = reply.get("result")
    made = result.get("id") if isinstance(result, dict) else None
    return made if isinstance(made, str) else default


def cmd_cancel(args: argparse.Namespace, settings: CellConfig) -> int:
    reply = send(args, settings, "cancel", {"job": args.job, "reason": args.reason})
    return finish(reply, f"cancel {args.job}", _job_state)


def cmd_answer(args: argparse.Namespace, settings: CellConfig) -> int:
    """`answer_hold`, naming the attempt shown now: a hold replaced meanwhile is not answered."""
    key = f"{args.job}/{args.index}"
    reply = send(args, settings, "jobs", {"job": args.job})
    if reply.get("outcome") != "accepted":
        print(f"cellctl answer: {reply.get('reason')}", file=sys.stderr)
        return EXIT_FAIL
    steps = (reply.get("result") or [{}])[0].get("steps", [])
    if not 0 <= args.index < len(steps):
        print(f"cellctl answer: no step {args.index} in job {args.job!r}", file=sys.stderr)
        return EXIT_FAIL
    body: dict[str, Any] = {
        "job": args.job,
        "step": args.index,
        "action": args.action,
        "attempt": steps[args.index].get("attempt"),
    }
    if args.line is not None:
        body["line"] = args.line
    return finish(send(args, settings, "answer_hold", body), f"{args.action} {key}", _job_state)


def cmd_setup(args: argparse.Namespace, settings: CellConfig, setup: dict[str, str]) -> int:
    body = {"device": args.device, "setup": setup, "merge": args.merge}

    def loaded(result: Result) -> str:
        got = result.get("setup", {}) if isinstance(result, dict) else {}
        return "done (" + ", ".join(f"{k}={v}" for k, v in sorted(got.items())) + ")"

    return finish(send(args, settings, "set_setup", body), f"setup of {args.device}", loaded)


def cmd_answer_changeover(
    args: argparse.Namespace, settings: CellConfig, setup: dict[str, str]
) -> int:
    body = {"device": args.device, "kind": "changeover", "setup": setup}

    def loaded(result: Result) -> str:
        got = result.get("setup", {}) if isinstance(result, dict) else {}
        return "recorded (" + ", ".join(f"{k}={v}" for k, v in sorted(got.items())) + ")"

    return finish(send(args, settings, "answer", body), f"changeover on {args.device}", loaded)


def cmd_bed_clear(args: argparse.Namespace, settings: CellConfig) -> int:
    body = {"device": args.device, "kind": "clear_bed"}
    return finish(
        send(args, settings, "answer", body), f"bed of {args.device}", lambda _: "cleared"
    )


def cmd_service(args: argparse.Namespace, settings: CellConfig) -> int:
    if args.state == "in":
        name, body = "into_service", {"device": args.device}
    else:
        name, body = "out_of_service", {"device": args.device, "reason": args.note}
    reply = send(args, settings, name, body)
    what = f"{args.device} {'back in' if args.state == 'in' else 'out of'} service"
    return finish(reply, what, lambda r: "done")
