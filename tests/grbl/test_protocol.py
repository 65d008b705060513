"""Pure logic of the host side: line cleaning, window, send-response, M6, replies, status."""

from __future__ import annotations

import pytest
from cellctl_drivers.grbl import codes
from cellctl_drivers.grbl.protocol import (
    CharWindow,
    ReplyKind,
    StatusTracker,
    build_info_changes,
    classify,
    clean_line,
    needs_send_response,
    parse_build_info,
    parse_status,
    stored_build_info,
    tool_change,
    tool_select,
)


def test_clean_line_drops_comments_whitespace_and_percent() -> None:
    assert clean_line("G1 X10 Y-2.5 F300 ; cut") == "G1X10Y-2.5F300"
    assert clean_line("G0 (rapid) Z5\r\n") == "G0Z5"
    assert clean_line("  (only a comment)  ") == ""
    assert clean_line("%") == ""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("$100=250", True),
        ("$N0=G20", True),
        ("$I=Mill 1", True),
        ("$RST=*", True),
        ("G10L2P1X0Y0", True),
        ("G10L20P1Z0", True),
        ("G10L200P1", False),
        ("G28.1", True),
        ("G30.1", True),
        ("G28", False),
        ("G1X1F100", False),
        ("$$", False),
        ("$H", False),
        ("$J=G91X1F100", False),
    ],
)
def test_send_response_is_for_eeprom_writes(line: str, expected: bool) -> None:
    assert needs_send_response(line) is expected


def test_tool_change_interception() -> None:
    tc = tool_change("M6T3")
    assert tc is not None and tc.tool == 3 and tc.rest == ""
    tc = tool_change("T12M06")
    assert tc is not None and tc.tool == 12
    tc = tool_change("G0Z5M6")
    assert tc is not None and tc.tool is None and tc.rest == "G0Z5"
    assert tool_change("M62P1") is None
    assert tool_change("G1X6F100") is None
    assert tool_select("T4") == 4
    assert tool_select("$J=G91X1F10") is None


def test_window_accepts_exactly_its_size() -> None:
    w = CharWindow(128)
    w.push(64)
    w.push(63)
    assert w.fits(1) and not w.fits(2)
    w.push(1)
    assert w.used == 128 and w.full_hits == 1 and w.peak == 128
    with pytest.raises(OverflowError):
        w.push(1)
    assert w.pop() == 64
    assert w.used == 64
    w.clear()
    assert w.used == 0 and len(w) == 0
    with pytest.raises(IndexError):
        w.pop()
    with pytest.raises(ValueError):
        w.push(129)


def test_classify_replies() -> None:
    assert classify("ok").kind == ReplyKind.OK
    r = classify("error:20")
    assert r.kind == ReplyKind.ERROR and r.code == 20
    r = classify("ALARM:3")
    assert r.kind == ReplyKind.ALARM and r.code == 3
    r = classify("Grbl 1.1h ['$' for help]")
    assert r.kind == ReplyKind.BANNER and r.tag == "1.1h"
    r = classify("GrblHAL 1.1f ['$' or '$HELP' for help]")
    assert r.kind == ReplyKind.BANNER and r.tag == "1.1f"
    assert classify("[MSG:'$H'|'$X' to unlock]").kind == ReplyKind.MESSAGE
    r = classify("[VER:1.1h.20190825:Mill]")
    assert r.kind == ReplyKind.FEEDBACK and r.tag == "VER"
    assert classify("$110=5000.000").kind == ReplyKind.SETTING
    assert classify("<Idle|MPos:0,0,0|FS:0,0>").kind == ReplyKind.STATUS
    assert classify("garbage\x00").kind == ReplyKind.OTHER


def test_build_info() -> None:
    info = parse_build_info([classify("[VER:1.1h.20190825:Mill A]"), classify("[OPT:VN,15,128]")])
    assert info.version == "1.1h.20190825" and info.info == "Mill A"
    assert info.planner_blocks == 15 and info.rx_buffer == 128 and info.line_numbers
    hal = parse_build_info([classify("[OPT:VNMSL,35,1024,3,0]")])
    assert hal.rx_buffer == 1024


def test_status_report_fields() -> None:
    r = parse_status(
        "<Hold:1|MPos:1.000,2.000,-3.500|Bf:12,100|Ln:42|FS:500,12000|Pn:XZ|Ov:110,50,90|A:SF>"
    )
    assert (r.state, r.substate) == ("Hold", 1)
    assert r.mpos == (1.0, 2.0, -3.5) and r.wpos is None
    assert (r.planner_free, r.rx_free, r.line) == (12, 100, 42)
    assert (r.feed, r.spindle) == (500.0, 12000.0)
    assert r.pins == "XZ" and r.overrides == (110, 50, 90) and r.accessories == "SF"
    assert parse_status("<Idle|WPos:0,0,0|F:100>").feed == 100.0
    for bad in ("Idle|MPos:0,0,0", "<|MPos:0>", "<Idle|MPos:a,b,c>", "<Run|Bf:1>"):
        with pytest.raises(ValueError):
            parse_status(bad)


def test_tracker_remembers_wco_between_reports() -> None:
    t = StatusTracker()
    t.update(parse_status("<Idle|MPos:10.000,10.000,0.000|FS:0,0|WCO:5.000,5.000,-1.000>"))
    assert t.wpos == (5.0, 5.0, 1.0)
    t.update(parse_status("<Run|MPos:12.000,10.000,0.000|FS:100,0>"))
    assert t.wpos == (7.0, 5.0, 1.0), "WCO from the earlier report still applies"
    t.update(parse_status("<Run|WPos:1.000,1.000,1.000|FS:100,0|Pn:P>"))
    assert t.mpos == (6.0, 6.0, 0.0) and t.pins == "P"
    t.update(parse_status("<Run|WPos:1.000,1.000,1.000|FS:100,0>"))
    assert t.pins == ""


def test_code_tables_have_meanings() -> None:
    assert "unsupported" in codes.describe_error(20)
    assert codes.describe_error(11).startswith("error:11 (line overflow")
    assert "reset while in motion" in codes.describe_alarm(3)
    assert codes.alarm_text(99) == "unknown alarm code"
    assert set(codes.ALARMS) == set(range(1, 10))


def test_window_takes_a_line_in_pieces() -> None:
    w = CharWindow(128)
    w.push(100)
    w.open(40)
    assert w.room == 28
    w.sent(28)
    assert w.used == 128 and w.full_hits == 1
    with pytest.raises(OverflowError):
        w.sent(1)
    assert w.pop() == 100
    w.sent(12)
    assert w.used == 40 and w.pop() == 40 and w.used == 0


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("MILL-1", "MILL-1"),
        ("mill-1", "MILL-1"),
        ("Mill 1", "MILL1"),
        ("mill-1 (north bay)", "MILL-1"),
        ("mill;1", "MILL"),
        ("mill/1", "MILL1"),
        ("mill?1!", "MILL1"),  # realtime commands, picked off on the way
        ("Mühle", "MHLE"),  # non-ASCII bytes are thrown away
        ("a)b", "A)B"),  # a `)` outside a comment is text
        ("M" * 76, "M" * 76),
        ("M" * 77, None),  # `$I=` + 77 = 80 characters: error:11, nothing stored
    ],
)
def test_stored_build_info_is_what_grbl_keeps(typed: str, stored: str | None) -> None:
    assert stored_build_info(typed) == stored
    assert (build_info_changes(typed) == []) == (typed == stored)
    if stored is not None:
        assert stored_build_info(stored) == stored, "GRBL's normalisation is idempotent"
