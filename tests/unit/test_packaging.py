"""The wheel's layout, checked against the tree (cheap; .ci/wheel builds and installs it).

A folder of Python files without `__init__.py` would be skipped by package
discovery, and its modules missing from the wheel (issue 24: `cellctl.telemetry`
was); every non-Python file beside the modules must ship as package data.
"""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="layout")


def _tree_files(folder: str) -> list[Path]:
    return [
        p
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    ]


def test_every_folder_with_python_is_a_package() -> None:
    for folder in SETUP["ROOTS"].values():
        dirs = {p.parent for p in _tree_files(folder) if p.suffix == ".py"}
        missing = [str(d.relative_to(ROOT)) for d in dirs if not (d / "__init__.py").is_file()]
        assert missing == []


def test_every_file_ships_under_its_import_name() -> None:
    packages: dict[str, str] = SETUP["packages"]()
    data: dict[str, list[str]] = SETUP["package_data"](packages)
    shipped: set[str] = set()
    for name, folder in packages.items():
        for p in (ROOT / folder).glob("*.py"):
            shipped.add(f"{folder}/{p.name}")
        for rel in data.get(name, []):
            shipped.add(f"{folder}/{rel}")
    in_tree = {
        p.relative_to(ROOT).as_posix() for f in ("cellctl", "drivers") for p in _tree_files(f)
    }
    in_tree = {p for p in in_tree if not p.endswith((".pyc", ".pyo"))}
    assert in_tree - shipped == set()
    assert packages["cellctl.telemetry"] == "cellctl/telemetry"
    assert packages["cellctl_drivers.marlin"] == "drivers/marlin"
    assert "schemas/command.submit.json" in data["cellctl"]
    assert "0001_jobs.sql" in data["cellctl.migrations"]
    # The operator page's files (no build step: they ship as they are).
    for name in ("index.html", "panel.js", "panel.css", "icon.svg"):
        assert f"static/{name}" in data["cellctl.panel"]
