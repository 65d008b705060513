"""The panel behind a reverse proxy: `X-Forwarded-Proto` makes the session cookie Secure and
`X-Forwarded-For` names the client the sign-in rate limit counts, only from an address in
`[panel] trusted_proxies`. The panel in-process on a real Mosquitto (sign-in is a CONNECT)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mqtt_broker import Mosquitto
from panel_rig import demo_config

from cellctl.config import load_settings
from cellctl.panel.proxy import Proxies
from cellctl.panel.serve import running


def test_only_a_trusted_proxy_is_believed() -> None:
    p = Proxies.of(["10.0.0.0/24", "::1"])
    assert p.client("10.0.0.5", "203.0.113.7") == "203.0.113.7"
    # What the client claimed left of the proxies' own entries does not count.
    assert p.client("10.0.0.5", "1.2.3.4, 203.0.113.7, 10.0.0.9") == "203.0.113.7"
    assert p.client("::1", "203.0.113.7") == "203.0.113.7"
    assert p.client("::ffff:10.0.0.5", "203.0.113.7") == "203.0.113.7"
    assert p.client("198.51.100.1", "203.0.113.7") == "198.51.100.1"  # not a proxy of ours
    assert p.client("10.0.0.5", "not-an-address") == "10.0.0.5"
    assert p.client("10.0.0.5", None) == "10.0.0.5"
    assert p.scheme("10.0.0.5", "http", "https") == "https"
    assert p.scheme("10.0.0.5", "http", "HTTPS, http") == "https"
    assert p.scheme("10.0.0.5", "http", "gopher") == "http"
    assert p.scheme("198.51.100.1", "http", "https") == "http"
    assert Proxies.of([]).client("10.0.0.5", "203.0.113.7") == "10.0.0.5"


def test_a_proxy_entry_that_is_no_address_is_a_config_mistake(tmp_path: Path) -> None:
    from cellctl.errors import ConfigError

    cfg = demo_config(tmp_path, 1883, trusted_proxies=["10.0.0.0/24", "proxy.local"])
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(cfg)


async def sign_in(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, SimpleCookie, dict[str, Any]]:
    """One sign-in from the page's own origin, as `headers` (a proxy's) say it came."""
    async with http.get(f"{url}/ui/me", headers=headers) as r:
        token = (await r.json())["csrf"]
        pre = SimpleCookie(r.headers.get("Set-Cookie", ""))
    send = {**headers, "X-CSRF-Token": token, "Cookie": f"cellctl_signin={token}"}
    body = {"user": "olga", "password": "any"}
    async with http.post(f"{url}/ui/login", json=body, headers=send) as r:
        cookie = SimpleCookie(r.headers.get("Set-Cookie", ""))
        return r.status, cookie if r.status == 200 else pre, await r.json()


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_proxy(tmp_path: Path, broker: Mosquitto, trusted: bool) -> None:
    proxies = ["127.0.0.1"] if trusted else ["192.0.2.1"]
    cfg = demo_config(tmp_path, broker.port, signin_attempts=2, trusted_proxies=proxies)
    async with (
        running(cfg, load_settings(cfg)) as url,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        host = url.removeprefix("http://")
        proxy = {"X-Forwarded-Proto": "https", "Origin": f"https://{host}"}
        a, b = (
            {**proxy, "X-Forwarded-For": "203.0.113.7"},
            {**proxy, "X-Forwarded-For": "203.0.113.8"},
        )
        status, cookie, _ = await sign_in(http, url, a)
        if not trusted:  # the page's https Origin is not this http panel's: refused
            assert status == 403
            a, b = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
            status, cookie, _ = await sign_in(http, url, a)
        assert status == 200
        assert bool(cookie["cellctl_session"]["secure"]) is trusted
        assert (await sign_in(http, url, a))[0] == 200
        status, _, body = await sign_in(http, url, a)
        assert status == 429
        # Trusted, the limit counts the client the proxy names; else the proxy itself.
        assert ("203.0.113.7" if trusted else "127.0.0.1") in body["error"], body
        assert (await sign_in(http, url, b))[0] == (200 if trusted else 429)
