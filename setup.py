"""The package layout, discovered from the tree so that no folder or data file is missed.

`cellctl/` installs as `cellctl`; the built-in drivers in `drivers/` install as
`cellctl_drivers` (a name that cannot clash in site-packages), which pyproject's
`[tool.setuptools.packages.find]` cannot do (it keeps folder names). Every folder
with an `__init__.py` is a package, and every other file inside a package's
folder (schemas, migrations, py.typed …) ships as its data. Metadata lives in
pyproject.toml; tests/unit/test_packaging.py checks this against the tree, and
.ci/wheel installs the built wheel in a fresh venv and runs the demo from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# import name → folder in this repository
ROOTS = {"cellctl": "cellctl", "cellctl_drivers": "drivers"}
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".py", ".pyc", ".pyo")


def packages() -> dict[str, str]:
    """Every package's import name → its folder (relative to the repository)."""
    out = {}
    for name, folder in ROOTS.items():
        for found in find_packages(str(HERE), include=[folder, folder + ".*"]):
            out[name + found[len(folder) :]] = found.replace(".", "/")
    return out


def package_data(pkgs: dict[str, str]) -> dict[str, list[str]]:
    """Every non-Python file under a package folder, owned by its nearest package."""
    by_folder = {folder: name for name, folder in pkgs.items()}
    data: dict[str, list[str]] = {}
    for folder in by_folder:
        for dirpath, dirnames, filenames in os.walk(HERE / folder):
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
            )
            rel_dir = Path(dirpath).relative_to(HERE).as_posix()
            if rel_dir != folder and rel_dir in by_folder:
                continue  # a sub-package owns its own files
            for f in sorted(filenames):
                if f.endswith(SKIP_SUFFIXES) or f.startswith("."):
                    continue
                rel = (Path(rel_dir) / f).relative_to(folder).as_posix()
                data.setdefault(by_folder[folder], []).append(rel)
    return data


if __name__ == "__main__":
    PACKAGES = packages()
    setup(
        packages=sorted(PACKAGES),
        package_dir={name: folder for name, folder in PACKAGES.items()},
        package_data=package_data(PACKAGES),
    )
