"""A job from a file, as the hot folder and `cellctl submit` both read one.

The job id is the file's stem and the start of its content's SHA-256, so the
same file submitted twice is the same job; a bare G-code file is a one-step
job whose process follows its suffix (a CNC program asks for milling).
"""

from __future__ import annotations

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
