"""structlog set-up: JSON lines for journald and files, readable output on a terminal.

Tracebacks never carry local variables: a frame's locals can hold a password
(link settings), a whole G-code program or a customer's job, and a log is read
by more people than the config. Secrets also hide from `repr` where they are
held (`field(repr=False)`, `Secret`), for the logs that print an object.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer

# structlog's default (`dict_tracebacks`) shows every frame's locals.
NO_LOCALS_TRACEBACKS = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False)
)


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    tracebacks: structlog.typing.Processor = (
        NO_LOCALS_TRACEBACKS if as_json else structlog.dev.set_exc_info
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Libraries (asyncua, pymodbus, asyncio) log through stdlib logging: their lines take
    # the same form as ours (one JSON object per line, a traceback inside it, not after
    # it), quieter than our own lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
                tracebacks,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
