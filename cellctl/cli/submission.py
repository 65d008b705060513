"""What `cellctl submit FILE` submits: a TOML job file or a bare G-code file, as a job.

Both forms of the command start here, so that the same file becomes the same
job: the local form queues the JobSpec with its program files in the store,
the MQTT form sends it as a `submit` command with the G-code in the payload,
or, for a program larger than INLINE_MAX, uploaded first in chunks
(`put_program`) and named by its sha256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellctl.config import JobsSection
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.jobfiles import gcode_job, job_id_for
from cellctl.jobs.spec import (
    GCODE_SUFFIXES,
    SHA_REF,
    JobRejected,
    JobSpec,
    parse_job_toml,
    safe_program_path,
)
from cellctl.model import ProgramKind
from cellctl.program_upload import Send, upload

# G-code larger than this goes by put_program rather than inside the submit (whose
# payload the cell caps, 4 MiB by default).
INLINE_MAX = 1 << 20


def build_submission(jobs: JobsSection, file: Path) -> tuple[JobSpec, dict[str, Path]]:
    """A TOML job file or a bare G-code file → (spec, program files). Raises JobRejected."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise JobRejected(f"{file}: cannot read: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if file.suffix.lower() in GCODE_SUFFIXES:
        return gcode_job(jobs, file, digest, scan_file(file)), {file.name: file}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(f"{file}: not UTF-8 text (byte {exc.start})") from None
    spec = parse_job_toml(text, str(file), job_id_for(file.stem, digest))
    files = {n: safe_program_path(file.parent, n) for n in spec.program_files()}
    return spec, files


def submit_command(spec: JobSpec, files: dict[str, Path]) -> dict[str, Any]:
    """The `submit` command (cellctl.commands.Submit) for this job. Raises JobRejected."""
    steps: list[dict[str, Any]] = []
    texts: dict[str, str] = {}
    for pos, step in enumerate(spec.route):
        prog = step.program_spec()
        out: dict[str, Any] = {"process": step.process}
        if step.setup:
            out["setup"] = dict(step.setup)
        if step.reserves:
            out["reserves"] = list(step.reserves)
        if step.estimated_s is not None:
            out["estimated_s"] = step.estimated_s
        if prog.kind == ProgramKind.GCODE:
            name = prog.file or ""
            if SHA_REF.match(name):
                out["file"] = name
            else:
                if name not in texts:
                    texts[name] = _gcode_text(pos, name, files)
                out["gcode"] = texts[name]
                out["name"] = name
        elif prog.kind in (ProgramKind.ROBOT_PROGRAM, ProgramKind.PLC_RECIPE):
            key = "program" if prog.kind == ProgramKind.ROBOT_PROGRAM else "recipe"
            out[key] = prog.name
            if prog.parameters:
                out["parameters"] = dict(prog.parameters)
        steps.append(out)
    body: dict[str, Any] = {"job": spec.id, "steps": steps, "priority": spec.priority}
    if spec.quantity != 1:
        body["quantity"] = spec.quantity
    if spec.due is not None:
        body["due"] = spec.due.isoformat()
    return body


def _gcode_text(pos: int, name: str, files: dict[str, Path]) -> str:
    path = files.get(name)
    if path is None:
        raise JobRejected(f"step {pos}: program file {name!r} was not provided")
    try:
        raw = path.read_bytes()  # bytes: "\r\n" must reach the cell as it is (same hash)
    except OSError as exc:
        raise JobRejected(f"program {name!r}: cannot read {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRejected(
            f"program {name!r}: not UTF-8 text (byte {exc.start}), which a JSON command "
            "cannot carry; submit it with --local on the cell's PC"
        ) from None


def upload_large_programs(
    body: dict[str, Any], send: Send, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """`body` with each program over INLINE_MAX uploaded and named `sha256:<hex>`.
    Raises UploadFailed (a CellError) with the cell's reason."""
    done: dict[str, str] = {}
    steps = []
    for step in body["steps"]:
        text = step.get("gcode")
        raw = text.encode() if isinstance(text, str) else b""
        if len(raw) <= INLINE_MAX:
            steps.append(step)
            continue
        key = hashlib.sha256(raw).hexdigest()
        if key not in done:
            say(f"uploading {step.get('name') or 'program'} ({len(raw)} bytes) in chunks")
            done[key] = upload(send, raw, step.get("name"))
        step = {k: v for k, v in step.items() if k not in ("gcode", "name")}
        steps.append({**step, "file": done[key]})
    return {**body, "steps": steps}
