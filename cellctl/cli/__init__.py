"""The `cellctl` command line (entry point `cellctl.cli:main`)."""

from cellctl.cli.main import main

__all__ = ["main"]
