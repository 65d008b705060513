"""What the panel makes of a client's file name and `path`: pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.panel.app import _label
from cellctl.panel.upload import UploadError, base_name, check_name


@pytest.mark.parametrize(
    ("given_name", "kept"),
    [
        ("part.gcode", "part.gcode"),
        ("../../etc/part.gcode", "part.gcode"),
        ("C:\\Users\\al\\part.gcode", "part.gcode"),
        ("/abs/dir/part.gcode", "part.gcode"),
        ("..", ""),
    ],
)
def test_only_the_last_part_of_a_file_name_is_kept(given_name: str, kept: str) -> None:
    assert base_name(given_name) == kept


@given(st.text(max_size=200))
def test_a_label_is_never_a_path(path: str) -> None:
    label = _label(path)
    assert len(label) <= 64
    assert ".." not in label.split("/") and not label.startswith("/") and "\\" not in label


def test_names_that_are_not_g_code() -> None:
    check_name("PART.GCODE")
    check_name("mill.nc")
    for name, why in [("p.bgcode", "turn off binary G-code"), ("p.stl", "is not G-code")]:
        with pytest.raises(UploadError, match=why) as exc:
            check_name(name)
        assert exc.value.status == 415
