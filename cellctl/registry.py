"""Driver and simulator names → classes, through entry points, imported lazily.

Built-in drivers register in pyproject.toml under the same groups a
third-party package uses (`cellctl.drivers`, `cellctl.simulators`,
`cellctl.simulator_options`), so there is exactly one way in. Nothing registers
by import side effect. Tests may add classes in-process with `extra=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, cast

from cellctl.driver import Driver, SimOptions, Simulator
from cellctl.errors import DriverNotFound

DRIVER_GROUP = "cellctl.drivers"
SIM_GROUP = "cellctl.simulators"
# A simulator's options class alone, in a module that does not import the simulator:
# the daemon validates `[devices.<id>.sim]` with it and runs the simulator in a child
# process, so the simulator's code (a Modbus or OPC UA server: 12 MiB for the demo's
# four) never loads in the daemon. Optional: without it the simulator class is loaded.
SIM_OPTIONS_GROUP = "cellctl.simulator_options"


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

    def simulator_options(self, name: str) -> type[SimOptions]:
        """The options class of simulator `name`, loading as little as its package allows."""
        if not (self.extra_sims and name in self.extra_sims):
            target = _targets(SIM_OPTIONS_GROUP).get(name)
            if target is not None and name in _targets(SIM_GROUP):
                try:
                    return cast(type[SimOptions], _load(target))
                except (ImportError, AttributeError) as exc:
                    raise DriverNotFound(
                        f"simulator {name!r}'s options are registered as {target!r} "
                        f"but cannot be loaded: {exc}"
                    ) from exc
        return self.simulator(name).Options

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
