"""What a serial device needs to start: a port with backend "real" (see cellctl/startcheck.py)."""

from __future__ import annotations

import os

from cellctl.driver import StartProblem


def port_problems(port: str, backend: str, key: str = "port") -> list[StartProblem]:
    """A missing port stops a real device from starting; an absent one (unplugged now)
    is a warning, since the supervisor retries until it appears."""
    if backend != "real":
        return []
    if not port:
        return [
            StartProblem(
                key,
                'required with backend = "real": the serial device, '
                'e.g. "/dev/serial/by-id/usb-…" (or backend = "sim")',
            )
        ]
    if not os.path.exists(port):
        return [
            StartProblem(
                key, f"{port} does not exist now; the daemon retries until it appears", True
            )
        ]
    return []
