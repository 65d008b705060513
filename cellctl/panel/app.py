"""The HTTP side: OctoPrint's version and upload endpoints, and their errors.

`GET /api/version` and `POST /api/files/local`, also under `/device/<id>/` to
send a job to one device. Status codes: 401 no or unknown API key, 403 the
key's user may not submit, 404 unknown device, 413 over the upload limit, 415
not G-code (with the reason), 409 the cell refused the job (its reason), 503
the cell did not answer; 201 with OctoPrint's upload answer otherwise.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from aiohttp import web

from cellctl import __version__
from cellctl.access import Access
from cellctl.cli.submission import submit_command
from cellctl.config import CellConfig
from cellctl.jobs.gcode import scan_file
from cellctl.jobs.jobfiles import gcode_job, job_id_for
from cellctl.jobs.spec import JobSpec
from cellctl.panel.apikeys import KeyFileError, KeyStore
from cellctl.panel.cell import CellClient, CellRefused, CellUnavailable
from cellctl.panel.upload import Upload, UploadError, receive

log = structlog.get_logger("cellctl.panel")

API_VERSION = "0.1"
TRUE = {"true", "1", "yes", "on"}
# A refusal the cell gives for want of a permission (cellctl.access.AccessDenied).
DENIED = re.compile(r"^(user .* lacks permission|permission .* refused|.* may not act on behalf)")


class Panel:
    """The handlers, with what they share: settings, keys, the cell."""

    def __init__(
        self, settings: CellConfig, keys: KeyStore, cell: CellClient, spool: Path | None
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.cell = cell
        self.spool = spool
        self.access = Access.from_section(settings.access)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self.version)
        app.router.add_post("/api/files/local", self.upload)
        app.router.add_get("/device/{device}/api/version", self.version)
        app.router.add_post("/device/{device}/api/files/local", self.upload)
        return app

    # --- helpers ---------------------------------------------------------

    def _user(self, request: web.Request) -> str:
        key = request.headers.get("X-Api-Key", "").strip()
        if not key:
            auth = request.headers.get("Authorization", "")
            key = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if not key:
            raise _error(401, "no API key: send it in the X-Api-Key header")
        try:
            user = self.keys.verify(key)
        except KeyFileError as exc:  # the operator's to fix; no key can be checked meanwhile
            log.error("API keys unreadable", error=str(exc))
            raise _error(500, f"the panel cannot check API keys: {exc}") from None
        if user is None:
            raise _error(401, "invalid API key")
        return user

    def _device(self, request: web.Request) -> str | None:
        device = request.match_info.get("device")
        if device is not None and device not in self.settings.devices:
            known = ", ".join(sorted(self.settings.devices)) or "none"
            raise _error(
                404, f"no device {device!r} in cell {self.settings.cell.name!r}; known: {known}"
            )
        return device

    # --- endpoints -------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        self._user(request)
        self._device(request)
        return web.json_response(
            {
                "api": API_VERSION,
                "server": __version__,
                "text": f"OctoPrint (cellctl {__version__})",
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        user = self._user(request)
        device = self._device(request)
        if not self.access.allowed(user, "submit"):
            raise _error(403, f"user {user!r} may not submit jobs: {self._roles(user)}")
        try:
            up = await receive(request, self.spool, self.settings.panel.max_upload_bytes)
        except UploadError as exc:
            log.info("upload refused", user=user, status=exc.status, reason=exc.message)
            raise _error(exc.status, exc.message) from None
        try:
            return await self.take(request, up, user, device, self.cell)
        finally:
            await asyncio.to_thread(up.discard)

    def _roles(self, user: str) -> str:
        roles = self.access.users.get(user, ())
        return f"roles {', '.join(roles)}" if roles else "no role in [access.users]"

    async def take(
        self, request: web.Request, up: Upload, user: str, device: str | None, cell: CellClient
    ) -> web.Response:
        """Store or submit an upload through `cell` (the panel's link, acting for `user`,
        or a signed-in operator's own connection)."""
        do_print = up.fields.get("print", "false").lower() in TRUE
        label = _label(up.fields.get("path", ""))
        spec = await asyncio.to_thread(self._job, up, label, device)
        try:
            if do_print:
                job = await self._submit(cell, spec, up, user, device)
            else:
                await cell.put_program(up.path, up.size, up.sha256, up.filename, user)
                job = None
        except CellUnavailable as exc:
            log.warning("the cell did not answer", user=user, error=str(exc))
            raise _error(503, f"the cell did not answer: {exc}") from None
        except CellRefused as exc:
            status = 403 if DENIED.match(str(exc)) else 409
            log.info("the cell refused an upload", user=user, status=status, reason=str(exc))
            raise _error(status, str(exc)) from None
        log.info(
            "upload taken",
            user=user,
            file=up.filename,
            size=up.size,
            job=spec.id,
            printing=do_print,
            device=device,
        )
        name = f"{label}/{up.filename}" if label else up.filename
        base = f"{request.scheme}://{request.host}"
        body: dict[str, Any] = {
            "files": {
                "local": {
                    "name": up.filename,
                    "path": name,
                    "origin": "local",
                    "refs": {"resource": f"{base}/api/files/local/{name}"},
                }
            },
            "done": True,
            "effectiveSelect": do_print,
            "effectivePrint": do_print,
            "program": f"sha256:{up.sha256}",
        }
        if job is not None:
            body["job"] = job
        return web.json_response(body, status=201)

    def _job(self, up: Upload, label: str, device: str | None) -> JobSpec:
        """The job the hot folder would make of this file (slicer metadata → setup).

        Its id is the file's stem and hash, as for `cellctl submit`; the label and the
        device asked for are part of it, since a reprint repeats the job as first sent."""
        stem = PurePosixPath(up.filename).stem
        try:
            spec = gcode_job(self.settings.jobs, Path(up.filename), up.sha256, scan_file(up.path))
        except ValueError as exc:
            raise _error(409, f"not a valid job: {exc}") from None
        if label or device:
            named = "_".join(p for p in (label, stem, device) if p)
            spec = spec.model_copy(update={"id": job_id_for(named, up.sha256)})
        return spec

    async def _submit(
        self, cell: CellClient, spec: JobSpec, up: Upload, user: str, device: str | None
    ) -> Any:
        if up.size <= self.settings.panel.inline_max_bytes:
            body = await asyncio.to_thread(submit_command, spec, {up.filename: up.path})
        else:
            await cell.put_program(up.path, up.size, up.sha256, up.filename, user)
            ref = f"sha256:{up.sha256}"
            step = spec.route[0].model_copy(update={"program": ref})
            body = submit_command(spec.model_copy(update={"route": (step,)}), {})
        body["repeat"] = "ended"  # sent again while it runs: the same job; once ended: again
        if device is not None:
            body["steps"][0]["device"] = device
        return await cell.command("submit", body, user)


def _label(path: str) -> str:
    """OctoPrint's `path` (a folder on its disk) as a label: never a path on ours."""
    parts = [p for p in re.split(r"[\\/]+", path) if p not in ("", ".", "..")]
    return "/".join(parts)[:64]


def _error(status: int, message: str) -> web.HTTPException:
    cls = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        413: web.HTTPRequestEntityTooLarge,
        415: web.HTTPUnsupportedMediaType,
        500: web.HTTPInternalServerError,
        503: web.HTTPServiceUnavailable,
    }[status]
    body = json.dumps({"error": message})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=0, actual_size=0, text=body, content_type="application/json"
        )
    exc: web.HTTPException = cls(text=body, content_type="application/json")
    return exc
