"""cellctl: a controller for a microfactory cell."""

from cellctl.lean import load_structlog_without_rich

__version__ = "0.1.0"

load_structlog_without_rich()
