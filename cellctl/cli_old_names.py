"""The module names of the command line before it became the `cellctl.cli` package.

`cellctl.cli_jobs`, `cellctl.cli_mqtt` … still import, for one release, as the
modules they became (`cellctl.cli.jobs`, `cellctl.cli.mqtt` …): the same module
objects, so code and tests written against the old names (a monkeypatch of
`cellctl.cli_jobs.load` included) keep working while they are changed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

OLD_NAMES = {
    f"cellctl.cli_{name}": f"cellctl.cli.{name}"
    for name in (
        "backup",
        "jobs",
        "jobs_remote",
        "jobs_view",
        "mqtt",
        "plan",
        "remote",
        "submission",
    )
}


class _Alias:
    """A meta path finder and loader (duck-typed: importlib.abc costs 20 ms at import)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in OLD_NAMES:
            return None
        return ModuleSpec(fullname, self)  # type: ignore[arg-type]

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None  # a throwaway: exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns what sys.modules holds after this: the real module.
        sys.modules[module.__name__] = importlib.import_module(OLD_NAMES[module.__name__])


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
