"""A job from a file, as the hot folder and `cellctl submit` both read one.

The job id is the file's stem and the start of its content's SHA-256. The same
file submitted again is the same job while that job is unfinished, and a new
job `<id>-r<n>` (a reprint) once it has ended (`Repeat.ENDED`); a bare G-code
file is a one-step job whose process follows its suffix (a CNC program asks for
milling).

A hot-folder drop also records the dropped file's signature: the file read again
after a crash between the job's commit and the file's delete has the same
signature, and is the same job even if that job has ended meanwhile.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cellctl.config import JobsSection
from cellctl.jobs.gcode import GcodeInfo
from cellctl.jobs.spec import JobSpec, StepSpec


def job_id_for(stem: str, digest: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:100] or "job"
    if not clean[0].isalnum():
        clean = "j" + clean
    return f"{clean}-{digest[:12]}"


def gcode_job(jobs: JobsSection, path: Path, digest: str, info: GcodeInfo) -> JobSpec:
    """The one-step job of a bare G-code file. Raises ValueError for an invalid job."""
    return JobSpec(
        id=job_id_for(path.stem, digest),
        route=(
            StepSpec(
                process=jobs.hotfolder_suffix_process.get(
                    path.suffix.lower(), jobs.hotfolder_process
                ),
                program=path.name,
                setup=info.requirements(),
            ),
        ),
    )


def drop_signature(st: os.stat_result) -> str:
    """One dropped file's identity (from its lstat): size, mtime, ctime and inode.

    A second copy of the same file is a new drop: it has a new ctime even when a
    copy keeps the mtime (`cp -p`) and the file system reuses the inode."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
