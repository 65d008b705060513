"""The hot folder: files dropped in a directory become jobs, crash-safe, and nothing
dropped there can harm the machine, the store or anything outside the folder.

Two kinds of file are read from the folder itself (sub-folders only hold programs):

* `*.toml`: a job description (cellctl.jobs.spec.JobSpec) whose G-code programs
  are named relative to it. Without an `id`, the job id is the file's stem plus
  a hash of its text.
* `*.gcode` (and .gco .g .nc .ngc) not named by any job file: a one-step job
  for `[jobs] hotfolder_process` whose setup requirements (material, nozzle)
  come from the slicer metadata. Its id is the stem plus a hash of the content:
  the same file dropped again is the same job while that job is unfinished (and
  after a crash between commit and delete: the drop's signature is recorded),
  and a reprint `<id>-r<n>` once it has ended.

Every other entry goes to `rejected/` with `<name>.error` beside it saying why:
another kind of file, a symbolic link, a FIFO, an empty or binary file, a line
over `hotfolder_max_line`, a file over `hotfolder_max_bytes`. Names starting with
"." or ending in .tmp/.part/~/.swp are a writer's temporary files: never read.

A file is complete when it was renamed in (seen as `x.part`/`x.tmp`, then under
its name), or carries its slicer's end marker, or kept the same size, mtime and
inode for `hotfolder_settle_s`. A G-code file that names its slicer but lacks
the marker, or ends in the middle of a line, waits up to `hotfolder_missing_s`.

Entries are never followed through a link (cellctl.safefs); each file is read
once, through the descriptor that was checked, into a private staging copy in
the program store (cellctl.dropread), and that copy is what the job gets. Once the job is
committed, exactly the files read are deleted, each only if it is still the
same file, unchanged; one that changed meanwhile moves to `rejected/`. A crash
before the delete just submits the same id again, which is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from cellctl.config import JobsSection
from cellctl.dropread import (
    NotYet,
    Refused,
    copy_gcode,
    has_end_marker,
    read_job_file,
)
from cellctl.jobs.content import escaped
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.jobfiles import drop_signature, gcode_job, job_id_for
from cellctl.jobs.service import JobService, Repeat
from cellctl.jobs.spec import (
    GCODE_SUFFIXES,
    JobRejected,
    JobSpec,
    NoSpace,
    parse_job_toml,
    safe_program_path,
)
from cellctl.safefs import Folder, Identity, Unsafe, what_is

log = structlog.get_logger("cellctl.hotfolder")

REJECTED = "rejected"
IGNORED_SUFFIXES = (".tmp", ".part", "~", ".error", ".swp")
PARTIAL_SUFFIXES = (".tmp", ".part")
STAGING_PREFIX = ".incoming-hotfolder-"  # swept by the program store at start


@dataclass
class _Seen:
    ident: Identity
    since: float  # clock time this state was first seen
    renamed: bool = False  # renamed in from a .part/.tmp name


@dataclass(frozen=True)
class Outcome:
    name: str
    accepted: str | None = None  # job id
    rejected: str | None = None  # reason


@dataclass(frozen=True)
class _Read:
    """A file read for a job: deleted once the job is committed, if still the same."""

    folder: Folder
    name: str  # in `folder`
    label: str  # relative to the hot folder
    ident: Identity
    staged: Path | None = None  # the private copy of a program
    digest: str = ""


@dataclass
class _Survey:
    root: Folder
    refused: list[tuple[str, str]]  # entries refused at sight: links, FIFOs …
    job_files: list[str]
    gcode: list[str]
    unknown: list[str]
    unsettled_job_file: bool


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def _suffix(name: str) -> str:
    return Path(name).suffix.lower()


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
        self._seen: dict[str, _Seen] = {}  # by path relative to the folder
        self._partials: set[tuple[int, int]] = set()  # (dev, ino) of .part/.tmp files
        self._waited: dict[str, Identity] = {}  # read and found incomplete in this state
        self._said: set[str] = set()  # problems logged once, not every poll
        self._waiting_for_space: set[str] = set()  # logged once each
        self.outcomes: deque[Outcome] = deque(maxlen=200)  # the latest, for status views

    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        await self._jobs.ready.wait()
        log.info("hot folder watched", folder=str(self.folder))
        while True:
            try:
                await self.scan_once()
            except OSError as exc:  # the folder vanished or is unreadable: say so, keep trying
                self._say("hot folder scan failed", str(exc))
            except Exception as exc:  # a bug: no dropped file may stop the daemon
                log.error("hot folder scan crashed", error=repr(exc), exc_info=exc)
            await asyncio.sleep(self._settings().hotfolder_poll_s)

    def _say(self, event: str, error: str) -> None:
        if error not in self._said:
            self._said.add(error)
            log.error(event, folder=str(self.folder), error=error)

    # --- completeness ---------------------------------------------------------------

    def _complete(self, rel: str, st: os.stat_result) -> bool:
        ident = Identity.of(st)
        now = self._clock()
        seen = self._seen.get(rel)
        if seen is None or seen.ident != ident:
            renamed = (ident.dev, ident.ino) in self._partials
            seen = self._seen[rel] = _Seen(ident, now, renamed)
        if seen.renamed:
            return True
        return now - seen.since >= self._settings().hotfolder_settle_s

    def _age(self, rel: str) -> float:
        seen = self._seen.get(rel)
        return 0.0 if seen is None else self._clock() - seen.since

    # --- one pass -------------------------------------------------------------------

    def _survey(self) -> _Survey:
        self.folder.mkdir(parents=True, exist_ok=True)
        root = Folder.open_root(self.folder)
        try:
            return self._classify(root)
        except BaseException:
            root.close()
            raise

    def _classify(self, root: Folder) -> _Survey:
        survey = _Survey(root, [], [], [], [], False)
        partials: set[tuple[int, int]] = set()
        present: set[str] = set()
        for name in root.names():
            st = root.lstat(name)
            if name == REJECTED or st is None or stat.S_ISDIR(st.st_mode):
                continue
            shown = escaped(name)
            if not name.isprintable():  # control characters, or bytes that are not UTF-8
                survey.refused.append((name, f"{shown}: the name holds unprintable bytes"))
                continue
            if stat.S_ISLNK(st.st_mode):
                target = escaped(root.readlink(name))
                why = f"a symbolic link (to '{target}'); the hot folder follows no links"
                survey.refused.append((name, f"{shown}: {why}: copy the file in"))
                continue
            if _ignored(name):
                if stat.S_ISREG(st.st_mode) and name.endswith(PARTIAL_SUFFIXES):
                    partials.add((st.st_dev, st.st_ino))
                continue
            if not stat.S_ISREG(st.st_mode):
                survey.refused.append((name, f"{shown}: {what_is(st)}, not a file"))
                continue
            present.add(name)
            kind = _suffix(name)
            done = self._complete(name, st)
            if not done and kind in GCODE_SUFFIXES:
                done = has_end_marker(root, name)
            if kind == ".toml":
                if done:
                    survey.job_files.append(name)
                else:
                    survey.unsettled_job_file = True
            elif done:
                (survey.gcode if kind in GCODE_SUFFIXES else survey.unknown).append(name)
        for rel in [r for r in self._seen if "/" not in r and r not in present]:
            del self._seen[rel]
            self._waited.pop(rel, None)
        self._partials = partials
        return survey

    async def scan_once(self) -> list[Outcome]:
        """One pass over the folder; returns what became of the files it handled."""
        survey = await asyncio.to_thread(self._survey)
        out: list[Outcome | None] = []
        try:
            for name, reason in survey.refused:
                out.append(await self._reject(survey.root, name, reason))
            claimed: set[str] = set()
            for name in survey.job_files:
                out.append(await self._job_file(survey.root, name, claimed))
            if not survey.unsettled_job_file:  # a job file still arriving may name them
                for name in survey.gcode:
                    if name not in claimed:
                        out.append(await self._bare_gcode(survey.root, name))
            for name in survey.unknown:
                kinds = " ".join(GCODE_SUFFIXES)
                reason = (
                    f"{escaped(name)}: unknown kind of file; the hot folder takes job files "
                    f"(.toml) and G-code ({kinds})"
                )
                out.append(await self._reject(survey.root, name, reason))
        finally:
            survey.root.close()
        done = [o for o in out if o is not None]
        self.outcomes.extend(done)
        return done

    # --- job files and G-code -------------------------------------------------------

    async def _job_file(self, root: Folder, name: str, claimed: set[str]) -> Outcome | None:
        return await self._take(
            root, name, lambda stack: self._prepare_job(root, name, claimed, stack)
        )

    async def _bare_gcode(self, root: Folder, name: str) -> Outcome | None:
        return await self._take(root, name, lambda stack: self._prepare_bare(root, name, stack))

    async def _take(
        self,
        root: Folder,
        name: str,
        prepare: Callable[[contextlib.ExitStack], tuple[JobSpec, list[_Read]]],
    ) -> Outcome | None:
        """Read a drop (off the loop) and submit it, reject it, or leave it for later."""
        with contextlib.ExitStack() as stack:
            try:
                spec, reads = await asyncio.to_thread(prepare, stack)
            except NotYet:
                return None
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._wait_for_space(name, f"no room to copy it in: {exc.strerror}")
                return None
            except Refused as exc:
                return await self._reject(root, name, exc.reason, exc.extras)
            extras = tuple(r.label for r in reads[1:] if "/" not in r.label)
            return await self._submit(root, name, spec, reads, extras)
        return None  # pragma: no cover (mypy: ExitStack may swallow)

    def _prepare_job(
        self, root: Folder, name: str, claimed: set[str], stack: contextlib.ExitStack
    ) -> tuple[JobSpec, list[_Read]]:
        shown = escaped(name)
        raw, ident = read_job_file(root, name, shown)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = escaped(raw[exc.start : exc.start + 8])
            raise Refused(f"{shown}: not UTF-8 text (byte {exc.start}: {bad})") from None
        digest = hashlib.sha256(raw).hexdigest()
        try:
            spec = parse_job_toml(
                text, shown, job_id_for(Path(name).stem, digest), ident.mtime_ns / 1e9
            )
            names = spec.program_files()
        except JobRejected as exc:
            raise Refused(str(exc)) from None
        extras = tuple(n for n in names if "/" not in n)
        for n in names:
            self._check_program_name(n, extras)
        claimed.update(names)
        reads = [_Read(root, name, name, ident)]
        found: list[tuple[Folder, str, str]] = []
        missing, waiting = [], False
        for n in names:
            try:
                chain, leaf = root.walk(n)
            except Unsafe as exc:
                raise Refused(f"program '{escaped(n)}': {exc}", extras) from None
            except FileNotFoundError:
                missing.append(n)
                continue
            for folder in chain[1:]:
                stack.callback(folder.close)
            pst = chain[-1].lstat(leaf)
            if pst is None:
                missing.append(n)
                continue
            if not stat.S_ISREG(pst.st_mode):
                raise Refused(f"program '{escaped(n)}' is {what_is(pst)}", extras)
            if not self._complete(n, pst) and not has_end_marker(chain[-1], leaf):
                waiting = True
            found.append((chain[-1], leaf, n))
        if missing:
            if self._age(name) >= self._settings().hotfolder_missing_s:
                raise Refused(
                    f"{shown}: program file(s) not found beside the job file: "
                    + ", ".join(escaped(m) for m in missing),
                    extras,
                )
            raise NotYet
        if waiting:
            raise NotYet
        try:
            for folder, leaf, n in found:
                reads.append(self._ingest(folder, leaf, n, stack))
        except Refused as exc:
            raise Refused(f"{shown}: program {exc.reason}", extras) from None
        return spec, reads

    def _check_program_name(self, name: str, extras: tuple[str, ...]) -> None:
        shown = escaped(name)
        try:
            safe_program_path(Path("."), name)
        except JobRejected as exc:
            raise Refused(str(exc), extras) from None
        if name.split("/", 1)[0] == REJECTED:
            raise Refused(f"program '{shown}': programs are not read from {REJECTED}/", extras)
        if _suffix(name) not in GCODE_SUFFIXES:
            kinds = " ".join(GCODE_SUFFIXES)
            raise Refused(f"program '{shown}': not a G-code file ({kinds})", extras)

    def _prepare_bare(
        self, root: Folder, name: str, stack: contextlib.ExitStack
    ) -> tuple[JobSpec, list[_Read]]:
        read = self._ingest(root, name, name, stack)
        assert read.staged is not None
        try:
            info = scan_file(read.staged)
            spec = gcode_job(self._settings(), Path(name), read.digest, info)
        except ValueError as exc:
            raise Refused(f"{escaped(name)}: {exc}") from None
        return spec, [read]

    def _ingest(self, folder: Folder, leaf: str, label: str, stack: contextlib.ExitStack) -> _Read:
        """Read a G-code file once into a private copy (cellctl.dropread); decide whether it
        is complete. Raises Refused with the line and the reason, or NotYet."""
        cfg = self._settings()
        st = folder.lstat(leaf)
        waiting = self._age(label) < cfg.hotfolder_missing_s
        if st is not None and self._waited.get(label) == Identity.of(st) and waiting:
            raise NotYet  # read before in this very state: still incomplete
        copy = copy_gcode(
            folder,
            leaf,
            escaped(label),
            cfg.hotfolder_max_line,
            cfg.hotfolder_max_bytes,
            self._staging(stack),
        )
        if copy.cut_short is not None or not copy.ends_line:
            if waiting:
                self._waited[label] = copy.ident
                raise NotYet
            if copy.cut_short is not None:
                raise Refused(f"{escaped(label)}: looks cut short: {copy.cut_short}")
            # No final newline, yet unchanged for hotfolder_missing_s: a hand-written file.
        return _Read(folder, leaf, label, copy.ident, copy.staged, copy.digest)

    def _staging(self, stack: contextlib.ExitStack) -> Path:
        root = self._jobs.programs.root
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=root, prefix=STAGING_PREFIX)
        os.close(fd)
        path = Path(name)
        stack.callback(lambda: path.unlink(missing_ok=True))
        return path

    # --- endings --------------------------------------------------------------------

    async def _submit(
        self, root: Folder, name: str, spec: JobSpec, reads: list[_Read], extras: tuple[str, ...]
    ) -> Outcome | None:
        files = {r.label: r.staged for r in reads if r.staged is not None}
        st = root.lstat(name)
        drop = drop_signature(st) if st is not None else None
        try:
            job = await self._jobs.submit(
                spec,
                files,
                source=f"hotfolder:{escaped(name)}",
                repeat=Repeat.ENDED,
                drop=drop,
            )
        except NoSpace as exc:
            self._wait_for_space(name, str(exc))
            return None
        except JobRejected as exc:
            return await self._reject(root, name, str(exc), extras)
        # Committed: the store holds the job and its programs; the drop-off copies go.
        await asyncio.to_thread(self._remove_read, root, reads, job.id)
        self._waiting_for_space.discard(name)
        log.info("hot folder job accepted", file=escaped(name), job=job.id)
        return Outcome(name, accepted=job.id)

    def _remove_read(self, root: Folder, reads: list[_Read], job_id: str) -> None:
        for r in reads:
            self._seen.pop(r.label, None)
            self._waited.pop(r.label, None)
            if r.folder.unlink_if_same(r.name, r.ident) or r.folder.lstat(r.name) is None:
                continue
            reason = (
                f"{escaped(r.label)}: changed after it was read for job {job_id}; "
                "kept here, not deleted"
            )
            log.warning("hot folder file changed after it was read", file=escaped(r.label))
            self._move_rejected(root, r.folder, r.name, reason, ())

    def _wait_for_space(self, name: str, reason: str) -> None:
        # Not the file's fault: it stays where it is and is tried again later.
        if name not in self._waiting_for_space:
            log.warning("hot folder file waits for disk space", file=escaped(name), reason=reason)
            self._waiting_for_space.add(name)

    async def _reject(
        self, root: Folder, name: str, reason: str, extras: tuple[str, ...] = ()
    ) -> Outcome | None:
        reason = _printable(reason)  # a job file's own text may hold escapes
        moved = await asyncio.to_thread(self._move_rejected, root, root, name, reason, extras)
        if not moved:
            return None
        log.warning("hot folder file rejected", file=escaped(name), reason=reason)
        for rel in (name, *extras):
            self._seen.pop(rel, None)
            self._waited.pop(rel, None)
        return Outcome(name, rejected=reason)

    def _move_rejected(
        self, root: Folder, folder: Folder, name: str, reason: str, extras: tuple[str, ...]
    ) -> bool:
        try:
            rejected = root.sub(REJECTED, create=True)
        except (Unsafe, OSError) as exc:
            self._say("hot folder cannot reject files", f"{REJECTED}/: {exc}")
            return False
        try:
            target = _free_name(rejected, name)
            _write_error(rejected, target + ".error", reason)
            with contextlib.suppress(FileNotFoundError):
                folder.move(name, rejected, target)
            # A rejected job's programs go with it: left behind they would become bare jobs.
            for extra in extras:
                est = root.lstat(extra)
                if est is not None and stat.S_ISREG(est.st_mode) and rejected.lstat(extra) is None:
                    root.move(extra, rejected, extra)
        finally:
            rejected.close()
        return True


def _printable(text: str) -> str:
    def show(c: str) -> str:
        if c.isprintable() or c == "\n":
            return c
        code = ord(c)
        return f"\\x{code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else code:02x}"

    return "".join(show(c) for c in text)


def _free_name(folder: Folder, name: str) -> str:
    if len(name.encode("utf-8", "surrogateescape")) > 200:  # room for `.N` and `.error`
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f"long-name-{digest}{_suffix(name)[:16]}"
    stem, suffix = os.path.splitext(name)
    target, n = name, 1
    while folder.lstat(target) is not None or folder.lstat(target + ".error") is not None:
        target = f"{stem}.{n}{suffix}"
        n += 1
    return target


def _write_error(folder: Folder, name: str, reason: str) -> None:
    tmp = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=folder.fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644, dir_fd=folder.fd)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(reason.rstrip("\n") + "\n")
    os.rename(tmp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
