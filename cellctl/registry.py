"""Driver and simulator names → classes, through entry points, imported lazily.

Built-in drivers register in pyproject.toml under the same groups a
third-party package uses (`cellctl.drivers`, `cellctl.simulators`), so there
is exactly one way in. Nothing registers by import side effect. Tests may add
classes in-process with `extra=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, cast

from cellctl.driver import Driver, Simulator
from cellctl.errors import DriverNotFound

DRIVER_GROUP = "cellctl.drivers"
SIM_GROUP = "cellctl.simulators"


def _targets(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Registry:
    """Looks names up in the entry points, plus classes given directly (tests)."""

    extra_drivers: Mapping[str, type[Any]] | None = None
    extra_sims: Mapping[str, type[Any]] | None = None

    def driver_names(self) -> list[str]:
        return sorted({*_targets(DRIVER_GROUP), *(self.extra_drivers or {})})

    def simulator_names(self) -> list[str]:
        return sorted({*_targets(SIM_GROUP), *(self.extra_sims or {})})

    def simulator_installed(self, name: str) -> bool:
        """An installed simulator (an entry point, not a test's in-process class): one
        that `cellctl sim NAME` can run in a process of its own."""
        return not (self.extra_sims and name in self.extra_sims) and name in _targets(SIM_GROUP)

    def driver_target(self, name: str) -> str:
        return _targets(DRIVER_GROUP).get(name, "(in-process)")

    def driver(self, name: str) -> type[Driver]:
        return cast(type[Driver], self._get(name, DRIVER_GROUP, self.extra_drivers, "driver"))

    def simulator(self, name: str) -> type[Simulator]:
        return cast(type[Simulator], self._get(name, SIM_GROUP, self.extra_sims, "simulator"))

    def _get(
        self, name: str, group: str, extra: Mapping[str, type[Any]] | None, what: str
    ) -> type[Any]:
        if extra and name in extra:
            return extra[name]
        targets = _targets(group)
        if name not in targets:
            known = sorted({*targets, *(extra or {})})
            listed = ", ".join(known) if known else "none installed"
            raise DriverNotFound(f"unknown {what} {name!r}; known: {listed}")
        try:
            return cast(type[Any], _load(targets[name]))
        except (ImportError, AttributeError) as exc:
            raise DriverNotFound(
                f"{what} {name!r} is registered as {targets[name]!r} but cannot be loaded: {exc}"
            ) from exc
