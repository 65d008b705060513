"""An upload streamed to a spool file: hashed, sized and checked as it arrives.

The body of `POST /api/files/local` is read in chunks of CHUNK bytes straight
into a temporary file; nothing holds the file whole, so a 100 MB upload costs
the panel one chunk of memory. What makes a file not G-code is found on the
way (binary G-code's magic, a NUL byte, bytes that are not UTF-8), and an
upload over the limit stops being read at the limit.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from aiohttp import BodyPartReader, web

from cellctl.jobs.spec import GCODE_SUFFIXES

CHUNK = 1 << 16
FIELD_MAX = 4096  # a form field other than the file (print, path, select …)
BGCODE_MAGIC = b"GCDE"
BGCODE_ADVICE = (
    "binary G-code (.bgcode) is not supported: turn off binary G-code in the slicer's "
    "printer settings (PrusaSlicer: Printer Settings → General → Firmware → "
    "Supports binary G-code)"
)


class UploadError(Exception):
    """Why an upload is refused, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    filename: str  # the client's file name, without any folder
    path: Path  # the spool file
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def base_name(name: str) -> str:
    """The last component of a client's file name, whichever separator it used."""
    last = PureWindowsPath(PurePosixPath(name).name).name.strip()
    return "" if last in (".", "..") else last


def check_name(name: str) -> None:
    """415 for a file that is not G-code by its name."""
    lower = name.lower()
    if lower.endswith(".bgcode") or lower.endswith(".bgc"):
        raise UploadError(415, BGCODE_ADVICE)
    if not lower.endswith(GCODE_SUFFIXES):
        raise UploadError(
            415, f"{name!r} is not G-code: expected one of {', '.join(GCODE_SUFFIXES)}"
        )


async def receive(request: web.Request, spool: Path | None, max_bytes: int) -> Upload:
    """The multipart form's file in a spool file and its other fields. Raises UploadError."""
    length = request.content_length
    if length is not None and length > max_bytes + 64 * 1024:  # the form's own bytes aside
        raise UploadError(413, f"{length} bytes: over the upload limit of {max_bytes} bytes")
    if not request.content_type.startswith("multipart/"):
        raise UploadError(400, "expected a multipart/form-data body with a 'file' field")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    upload: Upload | None = None
    fields: dict[str, str] = {}
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise UploadError(400, "nested multipart bodies are not taken")
            if part.name == "file" and part.filename is not None:
                if upload is not None:
                    raise UploadError(400, "one file per upload")
                upload = await _spool(part, spool, max_bytes)
            elif part.name:
                fields[part.name] = await _field(part)
    except UploadError:
        if upload is not None:
            upload.discard()
        raise
    except ValueError as exc:  # aiohttp's parser on a malformed part
        if upload is not None:
            upload.discard()
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    if upload is None:
        raise UploadError(400, "no 'file' field in the form")
    upload.fields = fields
    return upload


async def _field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(FIELD_MAX):
        data += chunk
        if len(data) > FIELD_MAX:
            raise UploadError(400, f"form field {part.name!r} is over {FIELD_MAX} bytes")
    return data.decode("utf-8", "replace").strip()


async def _spool(part: BodyPartReader, spool: Path | None, max_bytes: int) -> Upload:
    name = base_name(part.filename or "")
    if not name:
        raise UploadError(400, "the file has no name")
    check_name(name)
    fd, tmp = tempfile.mkstemp(prefix="cellctl-panel-", suffix=".part", dir=spool)
    upload = Upload(name, Path(tmp))
    digest = hashlib.sha256()
    text = codecs.getincrementaldecoder("utf-8")()
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await part.read_chunk(CHUNK):
                if upload.size == 0 and chunk.startswith(BGCODE_MAGIC):
                    raise UploadError(415, BGCODE_ADVICE)
                upload.size += len(chunk)
                if upload.size > max_bytes:
                    raise UploadError(413, f"{name}: over the upload limit of {max_bytes} bytes")
                _check_text(name, text, chunk, upload.size - len(chunk))
                digest.update(chunk)
                out.write(chunk)
            _check_text(name, text, b"", upload.size, final=True)
    except BaseException:
        upload.discard()
        raise
    if upload.size == 0:
        upload.discard()
        raise UploadError(415, f"{name} is empty")
    upload.sha256 = digest.hexdigest()
    return upload


def _check_text(
    name: str, decoder: codecs.IncrementalDecoder, chunk: bytes, at: int, final: bool = False
) -> None:
    nul = chunk.find(b"\0")
    if nul >= 0:
        raise UploadError(415, f"{name} is not G-code text: a NUL byte at offset {at + nul}")
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError as exc:
        raise UploadError(
            415, f"{name} is not G-code text: not UTF-8 near offset {at + exc.start}"
        ) from None
