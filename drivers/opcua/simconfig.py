"""The tag map of the simulated robot as a config table (tests, benchmarks, docs).

`configs/demo.toml` spells the same table out in TOML.
"""

from __future__ import annotations

from typing import Any

NS = "urn:cellctl:sim:robot"


def sim_robot_table(start: str = "handshake", **overrides: Any) -> dict[str, Any]:
    tags: dict[str, Any] = {
        "state": {"node": "s=Robot.State", "type": "string"},
        "alarm": {"node": "s=Robot.Alarm", "type": "string"},
        "active_program": {"node": "s=Robot.ActiveProgram", "type": "int"},
        "run_counter": {"node": "s=Robot.RunCounter", "type": "int"},
        "program_done": {"node": "s=Robot.ProgramDone", "type": "bool"},
        "error_code": {"node": "s=Robot.ErrorCode", "type": "int"},
        "start_ack": {"node": "s=Robot.StartAck", "type": "bool"},
        "progress": {"node": "s=Robot.Progress", "type": "float"},
        "door_closed": {"node": "s=Robot.DoorClosed", "type": "bool"},
        "zone_clear": {"node": "s=Robot.ZoneClear", "type": "bool"},
        "cycle_time": {"node": "s=Robot.CycleTime", "type": "float", "unit": "s", "read": "poll"},
        "watchdog_ok": {"node": "s=Robot.WatchdogOk", "type": "bool", "read": "poll"},
        "program_number": {
            "node": "s=Robot.ProgramNumber",
            "type": "int",
            "read": "none",
            "writable": True,
        },
        "start_request": {
            "node": "s=Robot.StartRequest",
            "type": "bool",
            "read": "none",
            "writable": True,
        },
        "heartbeat": {"node": "s=Robot.Heartbeat", "type": "int", "read": "none", "writable": True},
        "pause_request": {
            "node": "s=Robot.PauseRequest",
            "type": "bool",
            "read": "none",
            "writable": True,
        },
        "resume_request": {
            "node": "s=Robot.ResumeRequest",
            "type": "bool",
            "read": "none",
            "writable": True,
        },
    }
    for i in range(1, 7):
        tags[f"j{i}"] = {"node": f"s=Robot.J{i}", "type": "float", "unit": "deg"}
    program: dict[str, Any] = {
        "start": start,
        "programs": {"pick": 1, "place": 2, "tend": 3, "long": 10, "broken": 99},
        "done_tag": "program_done",
        "error_tag": "error_code",
        "run_counter_tag": "run_counter",
        "progress_tag": "progress",
        "ack_timeout_s": 5.0,
        "done_timeout_s": 120.0,
    }
    if start == "method":
        program |= {"method": "s=Robot.StartProgram", "object": "s=Robot", "args": ["$program"]}
    else:
        program |= {
            "number_tag": "program_number",
            "request_tag": "start_request",
            "ack_tag": "start_ack",
        }
    table: dict[str, Any] = {
        "namespace_uri": NS,
        "publishing_interval_ms": 50.0,
        "sampling_interval_ms": 20.0,
        "poll_interval_s": 0.5,
        "tags": tags,
        "state": {
            "tag": "state",
            "alarm_tag": "alarm",
            "values": {
                "IDLE": "idle",
                "RUNNING": "execute",
                "PAUSED": "held",
                "STOPPED": "stopped",
                "ESTOP": "aborted",
                "FAULT": "aborted",
            },
        },
        "program": program,
        "heartbeat": {"tag": "heartbeat", "interval_s": 0.5},
        "pause": {"tag": "pause_request", "value": True},
        "resume": {"tag": "resume_request", "value": True},
        "stop": {"method": "s=Robot.Stop", "object": "s=Robot"},
        "emergency_stop": {"method": "s=Robot.EmergencyStop", "object": "s=Robot"},
        "reset": {"method": "s=Robot.Reset", "object": "s=Robot"},
    }
    table.update(overrides)
    return table
