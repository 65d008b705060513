"""Running the panel: its config, its key file, its listening socket, until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from cellctl.config import CellConfig, load_settings
from cellctl.panel.apikeys import KeyStore
from cellctl.panel.app import Panel
from cellctl.panel.cell import CellClient, panel_target
from cellctl.panel.live import CellView
from cellctl.panel.sessions import Sessions
from cellctl.panel.ui import Operator

log = structlog.get_logger("cellctl.panel")


def state_dir(settings: CellConfig, source: Path) -> Path:
    """The cell's state directory, as cellctl.config.Cell finds it."""
    if settings.cell.state_dir is not None:
        return source.parent / settings.cell.state_dir
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return source.parent / "state"


def key_store(settings: CellConfig, source: Path) -> KeyStore:
    given = settings.panel.api_keys_file
    if given is not None:
        return KeyStore(source.parent / given)
    return KeyStore(state_dir(settings, source) / "panel-keys.json")


@contextlib.asynccontextmanager
async def running(
    source: Path, settings: CellConfig | None = None, port: int | None = None
) -> AsyncIterator[str]:
    """The panel serving; yields its base URL. `port` 0 picks a free one (tests)."""
    settings = settings or load_settings(source)
    panel_cfg = settings.panel
    spool = source.parent / panel_cfg.spool_dir if panel_cfg.spool_dir is not None else None
    if spool is not None:
        spool.mkdir(parents=True, exist_ok=True)
    target = panel_target(settings)
    cell = CellClient(target, panel_cfg)
    panel = Panel(settings, key_store(settings, source), cell, spool)
    # Operators sign in as themselves: their connections carry no panel credentials.
    # The embedded broker (amqtt) speaks 3.1.1 only: sign-ins need not wait for MQTT 5.
    embedded = settings.mqtt is not None and settings.mqtt.embedded
    users = Sessions(
        dataclasses.replace(
            target, username=None, password=None, mqtt5=target.mqtt5 and not embedded
        ),
        panel_cfg.command_timeout_s,
        panel_cfg.session_idle_h * 3600,
    )
    view = CellView(target)
    app = panel.app()
    Operator(panel, users, view, panel.access).routes(app)
    ctx: ssl.SSLContext | None = None
    if panel_cfg.tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(
            source.parent / panel_cfg.tls.cert_file, source.parent / panel_cfg.tls.key_file
        )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    view.start()
    try:
        site = web.TCPSite(
            runner, panel_cfg.host, panel_cfg.port if port is None else port, ssl_context=ctx
        )
        await site.start()
        bound = runner.addresses[0][1]  # the port bound, when 0 was asked for
        scheme = "https" if ctx is not None else "http"
        url = f"{scheme}://{panel_cfg.host}:{bound}"
        log.info("panel listening", url=url, cell=settings.cell.name)
        yield url
    finally:
        view.stop()  # ends the browsers' event streams first, or cleanup waits for them
        await runner.cleanup()
        await users.close()
        await cell.close()


async def serve(source: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(source) as url:
        print(url, flush=True)
        await stop.wait()
