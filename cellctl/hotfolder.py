"""The hot folder: files dropped in a directory become jobs, crash-safe.

Two kinds of file are read from the folder itself (sub-folders only hold programs):

* `*.toml`: a job description (cellctl.jobs.spec.JobSpec) whose G-code programs
  are named relative to it. Without an `id`, the job id is the file's stem plus
  a hash of its text.
* `*.gcode` (and .gco .g .nc .ngc) not named by any job file: a one-step job
  for `[jobs] hotfolder_process` whose setup requirements (material, nozzle)
  come from the slicer metadata. Its id is the stem plus a hash of the content,
  so the same file dropped twice is one job.

A file is read only after it stayed the same (size, mtime, inode) for
`hotfolder_settle_s`; names starting with "." or ending in .tmp/.part/~ are
never read, so writers can also write-then-rename. Once the job is committed
the files are deleted (their content lives on in the store); a crash before
the delete just submits the same id again, which is a no-op. A file that
cannot become a job moves to `rejected/` with `<name>.error` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from cellctl.config import JobsSection
from cellctl.jobs.gcode import GcodeInfo, cut_short, scan_file
from cellctl.jobs.jobfiles import drop_signature, gcode_job, job_id_for
from cellctl.jobs.service import JobService, Repeat
from cellctl.jobs.spec import (
    GCODE_SUFFIXES,
    SHA_REF,
    JobRejected,
    JobSpec,
    parse_job_toml,
    safe_program_path,
)

log = structlog.get_logger("cellctl.hotfolder")

REJECTED = "rejected"
IGNORED_SUFFIXES = (".tmp", ".part", "~", ".error", ".swp")

Signature = tuple[int, int, int]  # size, mtime_ns, inode


@dataclass
class _Seen:
    sig: Signature
    since: float  # clock time the signature was first seen


@dataclass(frozen=True)
class Outcome:
    name: str
    accepted: str | None = None  # job id
    rejected: str | None = None  # reason


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


class HotFolder:
    def __init__(
        self,
        folder: Path,
        jobs: JobService,
        settings: Callable[[], JobsSection],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.rejected = folder / REJECTED
        self._jobs = jobs
        self._settings = settings
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        self.outcomes: deque[Outcome] = deque(maxlen=200)  # the latest, for status views

    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rejected.mkdir(exist_ok=True)
        await self._jobs.ready.wait()
        log.info("hot folder watched", folder=str(self.folder))
        while True:
            try:
                await self.scan_once()
            except OSError as exc:  # the folder vanished or is unreadable: say so, keep trying
                log.warning("hot folder scan failed", folder=str(self.folder), error=str(exc))
            await asyncio.sleep(self._settings().hotfolder_poll_s)

    def _list(self) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not _ignored(p.name))

    def _settled(self, path: Path) -> bool:
        """True once `path` has kept the same signature for the settle time."""
        sig = _signature(path)
        now = self._clock()
        if sig is None:
            self._seen.pop(path, None)
            return False
        seen = self._seen.get(path)
        if seen is None or seen.sig != sig:
            self._seen[path] = _Seen(sig, now)
            return self._settings().hotfolder_settle_s == 0
        return now - seen.since >= self._settings().hotfolder_settle_s

    def _age(self, path: Path) -> float:
        seen = self._seen.get(path)
        return 0.0 if seen is None else self._clock() - seen.since

    async def scan_once(self) -> list[Outcome]:
        """One pass over the folder; returns what became of the files it handled."""
        entries = await asyncio.to_thread(self._list)
        present = set(entries)
        for gone in [p for p in self._seen if p not in present and p.parent == self.folder]:
            del self._seen[gone]
        settled = {p for p in entries if self._settled(p)}  # starts every file's settle clock
        out: list[Outcome] = []
        claimed: set[Path] = set()
        unsettled_job_file = False
        for path in entries:
            if path.suffix.lower() != ".toml":
                continue
            if path not in settled:
                unsettled_job_file = True
                continue
            outcome = await self._job_file(path, claimed)
            if outcome is not None:
                out.append(outcome)
        if not unsettled_job_file:
            for path in entries:
                if path.suffix.lower() in GCODE_SUFFIXES and path not in claimed:
                    if path in settled and path.exists():
                        outcome = await self._bare_gcode(path)
                        if outcome is not None:
                            out.append(outcome)
        self.outcomes.extend(out)
        return out

    async def _job_file(self, path: Path, claimed: set[Path]) -> Outcome | None:
        sig = _signature(path)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return None  # gone meanwhile
        if _signature(path) != sig:
            return None  # changed while read: wait for it to settle again
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return await self._reject(path, [], f"not UTF-8 text (byte {exc.start})")
        digest = hashlib.sha256(raw).hexdigest()
        try:
            spec = parse_job_toml(text, path.name, job_id_for(path.stem, digest))
            names = spec.program_files()
            programs = {n: safe_program_path(self.folder, n) for n in names}
        except JobRejected as exc:
            return await self._reject(path, [], str(exc))
        claimed.update(programs.values())
        missing = [n for n, p in programs.items() if not p.is_file()]
        if missing:
            if self._age(path) >= self._settings().hotfolder_missing_s:
                return await self._reject(
                    path,
                    list(programs.values()),
                    "program file(s) not found beside the job file: " + ", ".join(missing),
                )
            return None
        if not all(self._settled(p) for p in programs.values()):
            return None
        if await self._still_arriving(programs.values(), path):
            return None
        return await self._submit(path, spec, programs)

    async def _still_arriving(self, programs: Iterable[Path], job_file: Path) -> bool:
        """A G-code file that looks cut short may be a copy that stalled: wait for it up to
        `hotfolder_missing_s`; after that, submitting it says why it is refused."""
        if self._age(job_file) >= self._settings().hotfolder_missing_s:
            return False
        for p in programs:
            if p.suffix.lower() in GCODE_SUFFIXES:
                reason = await asyncio.to_thread(cut_short, p)
                if reason is not None:
                    return True
        return False

    async def _bare_gcode(self, path: Path) -> Outcome | None:
        if await self._still_arriving([path], path):
            return None
        try:
            digest, info = await asyncio.to_thread(_hash_and_scan, path)
        except OSError as exc:
            return await self._reject(path, [], f"cannot read: {exc}")
        try:
            spec = gcode_job(self._settings(), path, digest, info)
        except ValueError as exc:
            return await self._reject(path, [], str(exc))
        return await self._submit(path, spec, {path.name: path})

    async def _submit(self, path: Path, spec: JobSpec, programs: dict[str, Path]) -> Outcome:
        files = {n: p for n, p in programs.items() if not SHA_REF.match(n)}
        try:
            drop = await asyncio.to_thread(drop_signature, path)
            job = await self._jobs.submit(
                spec, files, source=f"hotfolder:{path.name}", repeat=Repeat.ENDED, drop=drop
            )
        except JobRejected as exc:
            return await self._reject(path, list(programs.values()), str(exc))
        # Committed: the store holds the job and its programs; the drop-off copies go.
        for p in {path, *programs.values()}:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            self._seen.pop(p, None)
        log.info("hot folder job accepted", file=path.name, job=job.id)
        return Outcome(path.name, accepted=job.id)

    async def _reject(self, path: Path, programs: list[Path], reason: str) -> Outcome:
        log.warning("hot folder file rejected", file=path.name, reason=reason)
        await asyncio.to_thread(self._move_rejected, path, programs, reason)
        for p in (path, *programs):
            self._seen.pop(p, None)
        return Outcome(path.name, rejected=reason)

    def _move_rejected(self, path: Path, programs: list[Path], reason: str) -> None:
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / path.name
        n = 1
        while target.exists():
            target = self.rejected / f"{path.stem}.{n}{path.suffix}"
            n += 1
        error = target.with_name(target.name + ".error")
        tmp = error.with_name("." + error.name + ".tmp")
        tmp.write_text(reason.rstrip("\n") + "\n", encoding="utf-8")
        os.replace(tmp, error)
        os.replace(path, target)
        # A rejected job's programs go with it: left behind they would become bare jobs.
        for p in programs:
            if p.parent == self.folder and p.is_file():
                dest = self.rejected / p.name
                if not dest.exists():
                    os.replace(p, dest)


def _hash_and_scan(path: Path) -> tuple[str, GcodeInfo]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), scan_file(path)
