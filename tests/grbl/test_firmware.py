"""The simulator's firmware model as pure logic, driven with explicit times."""

from __future__ import annotations

import pytest
from cellctl_drivers.grbl.firmware import FirmwareConfig, GrblFirmware, MachineState


def boot(**kw: object) -> GrblFirmware:
    fw = GrblFirmware(FirmwareConfig(**kw), now=0.0)  # type: ignore[arg-type]
    fw.take_output()
    return fw


def lines(fw: GrblFirmware) -> list[str]:
    return fw.take_output().decode().split("\r\n")[:-1]


def test_banner_settings_and_build_info() -> None:
    fw = GrblFirmware(FirmwareConfig(build_info="Mill A"), now=0.0)
    assert lines(fw) == ["Grbl 1.1h ['$' for help]"]
    fw.receive(b"$I\n$$\n", 0.0)
    out = lines(fw)
    # Stored as if typed with `$I=Mill A`: upper-cased, the space gone.
    assert out[:3] == ["[VER:1.1h.20190825:MILLA]", "[OPT:V,15,128]", "ok"]
    assert "$10=1" in out and out[-1] == "ok"


def test_rx_buffer_takes_128_and_flags_the_129th() -> None:
    fw = boot()
    # Fill the planner so that nothing is taken off the RX buffer.
    for i in range(16):
        fw.receive(b"G1X%dF60\n" % (i + 1), 0.0)
    assert fw.planner_used == 15
    fw.take_output()
    used = fw.rx_used
    fw.receive(b"G1X99F60" + b"Y" * (128 - used - 9) + b"\n", 0.0)
    assert fw.rx_used == 128 and fw.counters.overflows == 0
    assert fw.counters.rx_full_hits == 1
    fw.receive(b"X", 0.0)
    assert fw.counters.overflows == 1 and fw.rx_used == 128


def test_motion_time_follows_feed_and_time_factor() -> None:
    fw = boot(time_factor=10.0)
    fw.receive(b"G1X10F600\n", 0.0)  # 10 mm at 600 mm/min: 1 s model, 0.1 s real
    assert fw.state == MachineState.RUN
    deadline = fw.next_deadline(0.0)
    assert deadline is not None and abs(deadline - 0.1) < 1e-9
    fw.advance(0.05)
    assert 4.9 < fw.mpos[0] < 5.1
    fw.advance(0.11)
    assert fw.state == MachineState.IDLE and fw.mpos[0] == 10.0
    assert fw.executed == ["G1X10F600"]


def test_errors_for_m6_long_lines_and_missing_feed() -> None:
    fw = boot()
    fw.receive(b"M6T2\nG1X1\n" + b"G0X1" + b"0" * 76 + b"\n$Q\n", 0.0)
    assert lines(fw) == ["error:20", "error:22", "error:11", "error:3"]
    assert fw.executed == []
    fw.receive(b"G0X1" + b" " * 100 + b"\n", 0.0)  # whitespace does not count against 79
    assert lines(fw) == ["ok"]


def test_status_report_honours_dollar_10() -> None:
    fw = boot()
    fw.receive(b"?", 0.0)
    first = lines(fw)[0]
    assert first.startswith("<Idle|MPos:0.000,0.000,0.000|FS:0,0|WCO:")
    fw.receive(b"$10=2\n", 0.0)
    fw.take_output()
    fw.receive(b"?", 0.0)
    report = lines(fw)[0]
    assert "WPos:" in report and "|Bf:15,128|" in report and "WCO" not in report
    seen_ov = False
    for _ in range(12):
        fw.receive(b"?", 0.0)
        seen_ov = seen_ov or "|Ov:100,100,100" in lines(fw)[0]
    assert seen_ov, "overrides are reported every few reports"


def test_feed_hold_resume_and_overrides() -> None:
    fw = boot(time_factor=1.0)
    fw.receive(b"G1X10F600\n", 0.0)
    fw.receive(b"!", 0.1)
    assert (fw.state, fw.substate) == (MachineState.HOLD, 1)
    fw.advance(0.2)
    assert fw.substate == 0
    x = fw.mpos[0]
    fw.advance(5.0)
    assert fw.mpos[0] == x, "nothing moves in a hold"
    fw.receive(b"~", 5.0)
    assert fw.state == MachineState.RUN
    fw.receive(bytes([0x91]) * 3, 5.0)
    assert fw.feed_ov == 130
    fw.receive(bytes([0x90, 0x97]), 5.0)
    assert (fw.feed_ov, fw.rapid_ov) == (100, 25)


def test_soft_reset_while_moving_is_alarm_3_and_needs_unlock() -> None:
    fw = boot()
    fw.receive(b"G1X10F600\n", 0.0)
    fw.take_output()
    fw.receive(b"\x18", 0.5)
    assert lines(fw) == ["ALARM:3", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    assert fw.state == MachineState.ALARM and fw.planner_used == 0
    fw.receive(b"G0X0\n", 0.5)
    assert lines(fw) == ["error:9"]
    fw.receive(b"$X\n", 0.5)
    assert lines(fw) == ["[MSG:Caution: Unlocked]", "ok"]
    assert fw.state == MachineState.IDLE


def test_soft_reset_when_idle_keeps_position() -> None:
    fw = boot()
    fw.receive(b"G0X3\n", 0.0)
    fw.advance(10.0)
    fw.take_output()
    fw.receive(b"\x18", 10.0)
    assert lines(fw) == ["Grbl 1.1h ['$' for help]"]
    assert fw.state == MachineState.IDLE and fw.mpos[0] == 3.0


def test_check_mode_parses_without_moving_and_resets_on_exit() -> None:
    fw = boot()
    fw.receive(b"$C\nG1X5F100\nG5\n$C\n", 0.0)
    assert lines(fw) == [
        "[MSG:Enabled]",
        "ok",
        "ok",
        "error:20",
        "[MSG:Disabled]",
        "ok",
        "Grbl 1.1h ['$' for help]",
    ]
    assert fw.checked == ["G1X5F100"] and fw.executed == [] and fw.mpos == (0.0, 0.0, 0.0)


def test_dwell_waits_for_motion_then_answers() -> None:
    fw = boot()
    fw.receive(b"G1X1F60\nG4P0\n", 0.0)
    assert lines(fw) == ["ok"]
    fw.advance(0.5)
    assert fw.take_output() == b""
    fw.advance(1.01)
    assert lines(fw) == ["ok"]


def test_eeprom_write_loses_what_follows_on_the_wire() -> None:
    fw = boot()
    fw.receive(b"$110=4000\nG0X1\n", 0.0)
    assert lines(fw) == ["ok"]
    assert fw.counters.eeprom_violations == 1 and fw.settings[110] == "4000.000"


def test_homing_and_start_alarm() -> None:
    fw = GrblFirmware(FirmwareConfig(start_alarm=1, settings={22: "1"}), now=0.0)
    assert lines(fw) == ["ALARM:1", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    fw.receive(b"$H\n", 0.0)
    assert fw.state == MachineState.HOME and fw.take_output() == b""
    fw.advance(1.0)
    assert lines(fw) == ["ok"] and fw.state == MachineState.IDLE


def test_jog_and_jog_cancel() -> None:
    fw = boot()
    fw.receive(b"$J=G91X10F600\n", 0.0)
    assert lines(fw) == ["ok"] and fw.state == MachineState.JOG
    fw.receive(b"\x85", 0.1)
    assert fw.state == MachineState.IDLE and 0 < fw.mpos[0] < 10


def test_probe_contact_and_failure() -> None:
    fw = boot(probe_z=-5.0)
    fw.receive(b"G38.2Z-10F600\n", 0.0)
    fw.advance(1.0)
    out = lines(fw)
    assert out == ["[PRB:0.000,0.000,-5.000:1]", "ok"]
    fw.receive(b"G38.2Z-4F600\n", 1.0)
    fw.advance(2.0)
    assert lines(fw)[-1] == "ALARM:5"


# --- what GRBL keeps of a line (protocol.c / serial.c), exactly ------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"g1 x1 f600", "G1X1F600"),  # upper-cased, spaces gone
        (b"G1\tX2 (to x2) F600 ; comment", "G1X2F600"),  # tab, ( ) and ; comments
        (b"/G1X3F600", "G1X3F600"),  # block delete unsupported: the `/` alone is dropped
        (b"G1X4F600 (unclosed comment Y9", "G1X4F600"),  # to the end of the line
        (b"G1X5(a)Y1(b)F600", "G1X5Y1F600"),  # the line resumes after `)`
        (b"G1X6F6\x0100", "G1X6F600"),  # control characters dropped
    ],
)
def test_lines_are_normalised_like_grbl(sent: bytes, kept: str) -> None:
    fw = boot()
    fw.receive(sent + b"\n", 0.0)
    assert lines(fw) == ["ok"]
    assert fw.executed == [kept]


@pytest.mark.parametrize("sent", [b"%", b"G1X1\x7fF600"])
def test_what_grbl_keeps_and_then_refuses(sent: bytes) -> None:
    # `%` (program delimiter) and DEL are kept by GRBL's line reader; the parser refuses them.
    fw = boot()
    fw.receive(sent + b"\n", 0.0)
    assert lines(fw) == ["error:1"] and fw.executed == []


def test_realtime_and_non_ascii_bytes_never_reach_a_line() -> None:
    fw = boot()
    # `?` inside a line is a status request; 0xC3 0xA9 (e acute) is thrown away.
    fw.receive(b"$I=caf\xc3\xa9?1\n", 0.0)
    out = lines(fw)
    assert out[0].startswith("<Idle|") and out[-1] == "ok"
    assert fw.build_info == "CAF1"
    # 0x84 hidden in a UTF-8 character (U+0104) opens the safety door on its way.
    fw.receive("$I=\u0104\n".encode(), 0.0)
    assert fw.state == MachineState.DOOR


def test_a_line_past_79_kept_characters_overflows_but_comments_do_not_count() -> None:
    fw = boot()
    fw.receive(b"G1X1F600 (" + b"c" * 100 + b")\n", 0.0)
    assert lines(fw) == ["ok"]
    fw.receive(b"G1X1F600" + b"0" * 72 + b"\n", 0.0)  # 80 characters kept
    assert lines(fw) == ["error:11"]


@pytest.mark.parametrize(
    ("sent", "answer", "key", "reported"),
    [
        (b"$110=4000", "ok", 110, "4000.000"),
        (b"$11=0.0123456", "ok", 11, "0.012"),
        (b"$4=5", "ok", 4, "1"),  # a flag: stored as on
        (b"$1=25.9", "ok", 1, "25"),  # truncated
        (b"$1=300", "ok", 1, "44"),  # uint8_t
        (b"$30=12000.6", "ok", 30, "12001"),  # rpm: no decimals
        (b"$0=2", "error:6", 0, "10"),  # step pulse under 3 us
        (b"$20=1", "error:10", 20, "0"),  # soft limits need homing
        (b"$110=1e3", "error:3", 110, "5000.000"),  # no exponents
        (b"$110=inf", "error:2", 110, "5000.000"),
        (b"$110=-1", "error:4", 110, "5000.000"),
        (b"$103=1", "error:3", 110, "5000.000"),  # only 3 axes
        (b"$14=1", "error:3", 110, "5000.000"),
    ],
)
def test_settings_are_stored_as_grbl_keeps_them(
    sent: bytes, answer: str, key: int, reported: str
) -> None:
    fw = boot()
    fw.receive(sent + b"\n", 0.0)  # an EEPROM write goes alone (send-response)
    assert lines(fw) == [answer]
    fw.receive(b"$$\n", 0.0)
    assert f"${key}={reported}" in lines(fw)
