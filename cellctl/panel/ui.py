"""The operator panel in the browser: sign-in, the live view, and the page's commands.

Routes (beside the OctoPrint API of cellctl.panel.app):

- `GET /` the page, `GET /static/…` its script, styles and icon (shipped in the
  package, no build step);
- `GET /ui/me` who is signed in, the session's CSRF token and what the user may
  do (before sign-in: a CSRF token for the sign-in form, as a cookie too);
- `POST /ui/login`, `POST /ui/logout`;
- `GET /ui/events` server-sent events: the whole view on every (re)connect, then
  each change (cellctl.panel.live);
- `GET /ui/jobs` the queue and `GET /ui/programs` the cell's program store (the
  library), asked of the cell as the user;
- `POST /ui/command` one MQTT command as the user, `POST /ui/reset-all`,
  `POST /ui/upload` a program to the library (stored, or submitted), and
  `POST /ui/print` a stored program (`sha256`) as a job.

Every POST needs the `X-CSRF-Token` header with the session's token (sign-in:
the token of its cookie), and a matching `Origin` when the browser sends one.
The session cookie is HttpOnly, SameSite=Strict, and Secure when the panel
serves TLS. A command the user's roles do not allow is refused here (403) as
well as by the cell, and the page does not show it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from aiohttp import web

from cellctl.access import Access
from cellctl.jobs.jobfiles import job_id_for
from cellctl.panel.app import Panel
from cellctl.panel.cell import CellClient, CellRefused, CellUnavailable
from cellctl.panel.config import PanelSection
from cellctl.panel.live import CellView
from cellctl.panel.proxy import Proxies
from cellctl.panel.sessions import RateLimit, Session, Sessions, SignInRefused
from cellctl.panel.upload import UploadError, receive

log = structlog.get_logger("cellctl.panel")

STATIC = Path(__file__).parent / "static"
COOKIE = "cellctl_session"
PRE_COOKIE = "cellctl_signin"
# What the page may send; the cell checks the user's roles again.
PAGE_COMMANDS = frozenset(
    {
        "estop",
        "reset",
        "pause",
        "resume",
        "stop",
        "answer",
        "answer_hold",
        "cancel",
        "reprint",
        "set_priority",
    }
)
SHOWN = sorted(PAGE_COMMANDS | {"submit", "put_program", "jobs", "programs"})
SHA256 = re.compile(r"^[0-9a-f]{64}$")
RESETTABLE = {"aborted", "stopped"}
QUERY_S = 5.0  # the queue is asked again every 5 s: a slow answer is not worth waiting for
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class SessionCell(CellClient):
    """The upload path of cellctl.panel.app, sending on the user's own connection."""

    def __init__(self, sessions: Sessions, session: Session, panel: PanelSection) -> None:
        super().__init__(sessions.target, panel)
        self.sessions = sessions
        self.session = session

    async def command(self, name: str, body: Any, user: str) -> Any:
        reply = await self.sessions.command(self.session, name, body)
        if reply.get("outcome") == "unavailable":
            raise CellUnavailable(str(reply.get("reason")))
        if reply.get("outcome") != "accepted":
            raise CellRefused(str(reply.get("reason") or "rejected without a reason"))
        return reply.get("result")


class Operator:
    """The browser side of the panel."""

    def __init__(self, panel: Panel, sessions: Sessions, view: CellView, access: Access) -> None:
        self.panel = panel  # its upload handling is reused
        self.sessions = sessions
        self.view = view
        self.access = access
        cfg: PanelSection = panel.settings.panel
        self.limit = RateLimit(cfg.signin_attempts, cfg.signin_window_s)
        self.proxies = Proxies.of(cfg.trusted_proxies)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/ui/me", self.me)
        app.router.add_post("/ui/login", self.login)
        app.router.add_post("/ui/logout", self.logout)
        app.router.add_get("/ui/events", self.events)
        app.router.add_get("/ui/jobs", self.jobs)
        app.router.add_get("/ui/programs", self.programs)
        app.router.add_post("/ui/print", self.print_stored)
        app.router.add_post("/ui/command", self.command)
        app.router.add_post("/ui/reset-all", self.reset_all)
        app.router.add_post("/ui/upload", self.upload)

    # --- sessions and CSRF ---------------------------------------------

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _scheme(self, request: web.Request) -> str:
        """The browser's scheme: behind a trusted TLS proxy, https (cellctl.panel.proxy)."""
        forwarded = request.headers.get("X-Forwarded-Proto")
        return self.proxies.scheme(request.remote, request.scheme, forwarded)

    def _source(self, request: web.Request) -> str:
        """The client's address, as a trusted proxy names it (cellctl.panel.proxy)."""
        return self.proxies.client(request.remote, request.headers.get("X-Forwarded-For"))

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{self._scheme(request)}://{request.host}"

    def _guarded(self, request: web.Request) -> Session:
        """The session of a state-changing request, or an HTTP error: no session 401,
        no or wrong CSRF token (or a foreign Origin) 403."""
        session = self._session(request)
        if session is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "not signed in"}), content_type="application/json"
            )
        token = request.headers.get("X-CSRF-Token", "")
        if not self._same_origin(request) or not secrets.compare_digest(token, session.csrf):
            log.warning("a request without the CSRF token refused", user=session.user)
            raise web.HTTPForbidden(
                text=json.dumps({"error": "missing or wrong CSRF token"}),
                content_type="application/json",
            )
        return session

    def _may(self, user: str) -> dict[str, bool]:
        return {c: self.access.allowed(user, c) for c in SHOWN}

    def _cookie(
        self, request: web.Request, resp: web.StreamResponse, name: str, value: str
    ) -> None:
        resp.set_cookie(
            name,
            value,
            httponly=True,
            samesite="Strict",
            secure=self._scheme(request) == "https",
            path="/",
        )

    # --- pages ---------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=HEADERS)

    async def me(self, request: web.Request) -> web.Response:
        session = self._session(request)
        cell = self.panel.settings.cell.name
        if session is not None:
            return web.json_response(
                {"user": session.user, "csrf": session.csrf, "may": self._may(session.user),
                 "cell": cell},
                headers=HEADERS,
            )  # fmt: skip
        token = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
        resp = web.json_response({"user": None, "csrf": token, "cell": cell}, headers=HEADERS)
        self._cookie(request, resp, PRE_COOKIE, token)
        return resp

    async def login(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-CSRF-Token", "")
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not self._same_origin(request) or not secrets.compare_digest(token, pre):
            return _json_error(403, "missing or wrong CSRF token: reload the page")
        source = self._source(request)
        wait = self.limit.take(source)
        if wait > 0:
            log.warning("sign-in attempts over the limit", source=source)
            return web.json_response(
                {"error": f"too many sign-in attempts from {source}: try again in {wait:.0f} s"},
                status=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        try:
            form = await request.json()
            user, password = str(form["user"]), str(form.get("password", ""))
        except (ValueError, KeyError, TypeError):
            return _json_error(400, "send JSON {user, password}")
        try:
            session = await self.sessions.sign_in(user, password)
        except SignInRefused as exc:
            log.info("sign-in refused", user=user, source=source, reason=str(exc))
            return _json_error(401, f"sign-in refused: {exc}")
        log.info("signed in", user=user, source=source)
        resp = web.json_response(
            {"user": user, "csrf": session.csrf, "may": self._may(user),
             "cell": self.panel.settings.cell.name}
        )  # fmt: skip
        self._cookie(request, resp, COOKIE, session.id)
        resp.del_cookie(PRE_COOKIE, path="/")
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        session = self._guarded(request)
        await self.sessions.sign_out(session.id)
        log.info("signed out", user=session.user)
        resp = web.json_response({"user": None})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            return _json_error(401, "not signed in")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await resp.prepare(request)
        q = self.view.subscribe()
        try:
            await _send(resp, "whole", self.view.whole())
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")  # proxies close silent streams
                    if self._session(request) is None:
                        break  # signed out meanwhile
                    continue
                if item is None:
                    break
                await _send(resp, *item)
        except ConnectionResetError:
            pass  # the browser went away; it reconnects by itself if it wants to
        finally:
            self.view.unsubscribe(q)
        return resp

    async def jobs(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _json_error(401, "not signed in")
        reply = await self.sessions.command(session, "jobs", {"limit": 200}, QUERY_S)
        return _reply(reply)

    async def programs(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _json_error(401, "not signed in")
        if not self.access.allowed(session.user, "programs"):
            return _json_error(403, f"user {session.user!r} may not list programs")
        reply = await self.sessions.command(session, "programs", {"limit": 200}, QUERY_S)
        return _reply(reply)

    async def print_stored(self, request: web.Request) -> web.Response:
        """A stored program as a job, as its upload would have made it: the same program
        again is the same job while that job is unfinished, a reprint once it has ended."""
        session = self._guarded(request)
        if not self.access.allowed(session.user, "submit"):
            return _json_error(403, f"user {session.user!r} may not submit jobs")
        try:
            form = await request.json()
            sha, name = str(form["sha256"]), str(form.get("name") or "")
            setup = {str(k): str(v) for k, v in dict(form.get("setup") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return _json_error(400, "send JSON {sha256, name?, setup?}")
        if not SHA256.match(sha):
            return _json_error(400, "sha256: 64 lowercase hex digits")
        jobs = self.panel.settings.jobs
        suffix = PurePosixPath(name).suffix.lower()
        process = jobs.hotfolder_suffix_process.get(suffix, jobs.hotfolder_process)
        stem = PurePosixPath(name).stem or "program"
        body = {
            "job": job_id_for(stem, sha),
            "steps": [{"process": process, "file": f"sha256:{sha}", "setup": setup}],
            "repeat": "ended",
        }
        reply = await self.sessions.command(session, "submit", body)
        log.info("stored program printed from the page", user=session.user, program=sha[:12],
                 outcome=reply.get("outcome"))  # fmt: skip
        return _reply(reply)

    async def command(self, request: web.Request) -> web.Response:
        session = self._guarded(request)
        try:
            form = await request.json()
            name, body = str(form["command"]), dict(form.get("body") or {})
        except (ValueError, KeyError, TypeError):
            return _json_error(400, "send JSON {command, body}")
        if name not in PAGE_COMMANDS:
            return _json_error(400, f"the page does not send {name!r}")
        if not self.access.allowed(session.user, name):
            return _json_error(403, f"user {session.user!r} may not {name}")
        reply = await self.sessions.command(session, name, body)
        log.info("command from the page", user=session.user, command=name,
                 outcome=reply.get("outcome"))  # fmt: skip
        return _reply(reply)

    async def reset_all(self, request: web.Request) -> web.Response:
        """After an emergency stop: reset every aborted or stopped device, one answer each."""
        session = self._guarded(request)
        if not self.access.allowed(session.user, "reset"):
            return _json_error(403, f"user {session.user!r} may not reset")
        out = {}
        for dev, snap in sorted(self.view.devices.items()):
            if snap.get("state") in RESETTABLE:
                reply = await self.sessions.command(session, "reset", {"device": dev})
                out[dev] = {"outcome": reply.get("outcome"), "reason": reply.get("reason")}
        return web.json_response({"reset": out})

    async def upload(self, request: web.Request) -> web.StreamResponse:
        session = self._guarded(request)
        if not self.access.allowed(session.user, "submit"):
            return _json_error(403, f"user {session.user!r} may not submit jobs")
        cfg = self.panel.settings.panel
        try:
            up = await receive(request, self.panel.spool, cfg.max_upload_bytes)
        except UploadError as exc:
            return _json_error(exc.status, exc.message)
        cell = SessionCell(self.sessions, session, cfg)
        try:
            return await self.panel.take(request, up, session.user, None, cell)
        except web.HTTPException as exc:
            return web.json_response(json.loads(exc.text or '{"error": "?"}'), status=exc.status)
        finally:
            await asyncio.to_thread(up.discard)


def _reply(reply: dict[str, Any]) -> web.Response:
    status = {"accepted": 200, "unavailable": 503}.get(str(reply.get("outcome")), 409)
    return web.json_response(reply, status=status)


async def _send(resp: web.StreamResponse, kind: str, data: Any) -> None:
    text = json.dumps(data, separators=(",", ":"))
    await resp.write(f"event: {kind}\ndata: {text}\n\n".encode())
