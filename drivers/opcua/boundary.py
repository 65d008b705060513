"""Where asyncua's exceptions end: every foreign error becomes one cellctl error.

Everything here runs on the client thread, next to the asyncua call that
failed, so that only cellctl exceptions ever cross to the daemon's loop.
"""

from __future__ import annotations

import asyncio

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from cellctl.errors import CellError, LinkError, WrongDevice


class AccessDenied(WrongDevice):
    """The server refused our user or certificate, or its certificate is not trusted.

    A WrongDevice: retrying soon cannot help, so the supervisor backs off to its cap."""


class Refused(WrongDevice):
    """The server answered a write or a method call with a bad status code.

    The session is fine; the callers decide what a refusal means for a step."""

    def __init__(self, what: str, status: str) -> None:
        super().__init__(f"{what}: refused ({status})")
        self.status = status


class TypeMismatch(WrongDevice):
    """A value does not fit the DataType the server declares for a node or a method
    argument. Found before anything is sent: the session is fine, nothing was written."""


class UntrustedServer(Exception):
    """Raised inside asyncua's certificate check; translated to AccessDenied."""


_AUTH_CODES = {
    StatusCodes.BadUserAccessDenied: "wrong user name or password",
    StatusCodes.BadIdentityTokenRejected: "the server does not accept this kind of login",
    StatusCodes.BadIdentityTokenInvalid: "wrong user name or password",
    StatusCodes.BadCertificateUntrusted: "the server does not trust our client certificate",
    StatusCodes.BadCertificateInvalid: "the server rejected our client certificate",
    StatusCodes.BadSecurityChecksFailed: "security checks failed (certificate not trusted?)",
    StatusCodes.BadSecurityPolicyRejected: "the server does not offer this security policy",
}

LINK_EXC = (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)
IO_EXC = (*LINK_EXC, UaError)


def status_name(code: int) -> str:
    try:
        return ua.StatusCode(ua.UInt32(code)).name
    except Exception:
        return f"0x{code:08X}"


def status_code(exc: BaseException) -> int | None:
    if isinstance(exc, UaStatusCodeError | ServiceError):
        return int(exc.code)
    return None


def translate(exc: BaseException, what: str) -> CellError:
    """asyncua/OS exceptions → the cellctl tree, one readable line each."""
    if isinstance(exc, CellError):
        return exc
    if isinstance(exc, UntrustedServer):
        return AccessDenied(f"{what}: {exc}")
    code = status_code(exc)
    if code is not None:
        if code in _AUTH_CODES:
            return AccessDenied(f"{what}: {_AUTH_CODES[code]} ({status_name(code)})")
        return LinkError(f"{what}: {status_name(code)}")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return LinkError(f"{what}: no answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return LinkError(f"{what}: connection refused")
    if isinstance(exc, OSError):  # ConnectionError included
        return LinkError(f"{what}: {exc.strerror or exc}")
    return LinkError(f"{what}: {type(exc).__name__}: {exc}")
