"""The panel behind a reverse proxy: whom to believe about the client.

`X-Forwarded-Proto` and `X-Forwarded-For` are anyone's to send; they count only
on a connection from an address in `[panel] trusted_proxies`. Then the scheme
the browser used (`https`: the session cookie is Secure, and the page's
`Origin` is compared with it) is the proxy's, and the client's address (what
the sign-in rate limit counts per) is the right-most `X-Forwarded-For` entry
that is not itself a trusted proxy: entries further left are what the client
claimed, which a proxy appends to but never checks.

Pure: no aiohttp, so that the config parser and the tests import it cheaply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(entry: str) -> Network:
    """An address or a network (`10.0.0.5`, `10.0.0.0/24`, `::1`). Raises ValueError."""
    return ipaddress.ip_network(entry.strip(), strict=False)


@dataclass(frozen=True)
class Proxies:
    networks: tuple[Network, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> Proxies:
        return cls(tuple(network(e) for e in entries))

    def trusts(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address a request comes from: the peer, unless a trusted proxy says."""
        if not self.trusts(peer) or not forwarded_for:
            return peer or "?"
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop if _address(hop) else peer or "?"
        return hops[0] if hops else peer or "?"

    def scheme(self, peer: str | None, own: str, forwarded_proto: str | None) -> str:
        """The scheme the browser used: the proxy's first `X-Forwarded-Proto` if trusted."""
        if not self.trusts(peer) or not forwarded_proto:
            return own
        first = forwarded_proto.split(",")[0].strip().lower()
        return first if first in ("http", "https") else own


def _address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
