"""The project's own exception tree.

Core code catches only these. Each driver translates the exceptions of its
libraries (pyserial, asyncua, pymodbus, OSError …) into one of them at its
boundary, so that the supervisor can decide what to do without knowing which
library a device happens to use.
"""

from __future__ import annotations


class CellError(Exception):
    """Base of every error cellctl raises on purpose."""


class ConfigError(CellError):
    """The configuration is invalid. `problems` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(CellError):
    """A command line that cannot be carried out as given (the CLI exits 2)."""


class DriverNotFound(CellError):
    """A driver or simulator name that no installed package provides."""


class LinkError(CellError):
    """The link to a device could not be opened or was lost. Retried by the supervisor."""


class WrongDevice(CellError):
    """Another machine than the configured one answered on the link. Not retried quickly."""


class DeviceFault(CellError):
    """The device reported a fault (alarm, kill, exception response)."""


class StepFailed(CellError):
    """A job step cannot complete; the message says why."""


class NotSupported(CellError):
    """The device cannot do what was asked (for example an automatic changeover)."""


class InvalidTransition(CellError):
    """A state machine was asked for a transition its table does not allow."""
