"""GRBL 1.1 error and alarm codes with their meanings (doc/csv/*_en_US.csv upstream)."""

from __future__ import annotations

ERRORS: dict[int, str] = {
    1: "expected command letter: a G-code word has no letter",
    2: "bad number format: a word's value is missing or malformed",
    3: "invalid statement: '$' system command not recognised or supported",
    4: "negative value where a positive one is expected",
    5: "setting disabled: homing is not enabled in settings",
    6: "step pulse time must be greater than 3 microseconds",
    7: "EEPROM read failed: affected settings restored to defaults",
    8: "not idle: this '$' command needs the machine idle",
    9: "G-code locked out during alarm or jog",
    10: "soft limits cannot be enabled without homing",
    11: "line overflow: more characters than the line buffer holds; line not executed",
    12: "setting value makes the step rate exceed the maximum",
    13: "safety door open: door state initiated",
    14: "build info or startup line too long for EEPROM; not stored",
    15: "jog target exceeds machine travel; jog ignored",
    16: "invalid jog command: no '=' or prohibited G-code",
    17: "laser mode requires PWM output",
    20: "unsupported or invalid G-code command in block",
    21: "more than one command from the same modal group in block",
    22: "feed rate not yet set or undefined",
    23: "G-code command requires an integer value",
    24: "more than one command requiring axis words in block",
    25: "repeated G-code word in block",
    26: "no axis words in block for a command or modal state that needs them",
    27: "line number value is invalid",
    28: "G-code command is missing a required value word",
    29: "G59.x work coordinate systems are not supported",
    30: "G53 only allowed with G0 and G1 motion modes",
    31: "axis words in block that no command or modal state uses",
    32: "G2/G3 arc needs at least one in-plane axis word",
    33: "motion command target is invalid",
    34: "arc radius value is invalid",
    35: "G2/G3 arc needs at least one in-plane offset word",
    36: "unused value words in block",
    37: "G43.1 dynamic tool length offset not on the configured tool length axis",
    38: "tool number greater than the maximum supported",
}

ALARMS: dict[int, str] = {
    1: "hard limit triggered: position likely lost, re-homing recommended",
    2: "soft limit: motion target exceeds machine travel; position retained, may be unlocked",
    3: "reset while in motion: position likely lost, re-homing recommended",
    4: "probe fail: probe not in the expected initial state",
    5: "probe fail: probe did not contact within the programmed travel",
    6: "homing fail: the homing cycle was reset",
    7: "homing fail: safety door opened during homing",
    8: "homing fail: pull-off did not clear the limit switch",
    9: "homing fail: limit switch not found within search distance",
}

# Alarms after which GRBL cannot vouch for its position: recover by homing when possible.
POSITION_LOST = frozenset({1, 3, 6, 7, 8, 9})


def error_text(code: int) -> str:
    return ERRORS.get(code, "unknown error code")


def alarm_text(code: int) -> str:
    return ALARMS.get(code, "unknown alarm code")


def describe_error(code: int) -> str:
    return f"error:{code} ({error_text(code)})"


def describe_alarm(code: int) -> str:
    return f"ALARM:{code} ({alarm_text(code)})"
