"""cellctl: a controller for a microfactory cell."""

from cellctl.lean import load_structlog_without_rich

__version__ = "0.1.0"

load_structlog_without_rich()


def _old_cli_names() -> None:
    # `cellctl.cli_jobs` & co. import as `cellctl.cli.jobs` & co. for one release.
    from cellctl.cli_old_names import install

    install()


_old_cli_names()
