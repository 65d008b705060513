"""The committed protobuf module is what protoc makes from the committed .proto today."""

from __future__ import annotations

from pathlib import Path

from cellctl.telemetry.sparkplug import generate


def test_regenerating_the_payload_module_changes_nothing(tmp_path: Path) -> None:
    made = generate.generate(tmp_path)
    for name in (made.name, made.with_suffix(".pyi").name):
        assert (tmp_path / name).read_text() == (generate.HERE / name).read_text(), name
