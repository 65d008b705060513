"""`set_priority` reorders what a device runs next, durably and audited; `programs` lists
the cell's program store, a page at a time, and a stored program is submitted by its hash.
Real broker, real daemon (App), the test device."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, write_config

from cellctl.telemetry.topics import Topics

G = "G28\nG1 X10\n"


async def cli(*argv: str, port: int) -> tuple[int, str, str]:
    """`cellctl` in a subprocess, pointed at the test broker's cell (no config: the test
    device's driver is this suite's own)."""
    where = ["--host", "127.0.0.1", "--port", str(port), "--cell", "t1", "--timeout", "15"]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cellctl", *argv, *where],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "cellctl.db")


async def test_a_raised_priority_runs_first(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    try:
        async with running_app(cell):
            await sub.online()
            # The device takes nothing while the queue is arranged.
            r = await cmd.send("out_of_service", {"device": "d1"})
            assert r["outcome"] == "accepted", r
            for job in ("j-old", "j-new"):
                r = await cmd.send(
                    "submit", {"job": job, "steps": [{"process": "print", "gcode": G}]}
                )
                assert r["outcome"] == "accepted", r
            r = await cmd.send("set_priority", {"job": "j-new", "priority": 7, "id": "p-1"})
            assert r["outcome"] == "accepted", r
            assert (r["result"]["id"], r["result"]["priority"]) == ("j-new", 7)
            # A replayed id is answered, not carried out again (nor audited twice).
            again = await cmd.send("set_priority", {"job": "j-new", "priority": 7, "id": "p-1"})
            assert again["outcome"] == "accepted" and again["result"] == r["result"]
            r = await cmd.send("set_priority", {"job": "nope", "priority": 1})
            assert r["outcome"] == "rejected" and "nope" in r["reason"], r
            r = await cmd.send("set_priority", {"job": "j-old", "priority": 5000})
            assert r["outcome"] == "rejected" and "priority" in r["reason"], r
            code, out, err = await cli("priority", "j-old", "2", port=broker.port)
            assert (code, out) == (0, "job j-old: priority 2 (queued)\n"), err
            r = await cmd.send("into_service", {"device": "d1"})
            assert r["outcome"] == "accepted", r
            await sub.wait_for(
                lambda: (
                    {m.json()["job"] for m in sub.on("/events") if m.json()["state"] == "done"}
                    >= {"j-old", "j-new"}
                ),
                "both jobs done",
            )
            r = await cmd.send("jobs", {})
            started = {j["id"]: j["steps"][0]["started"] for j in r["result"]}
            assert started["j-new"] < started["j-old"], started
            r = await cmd.send("set_priority", {"job": "j-old", "priority": 1})
            assert r["outcome"] == "rejected" and "done" in r["reason"], r
        with db(tmp_path) as conn:  # stored, with its history and its audit row
            assert conn.execute("SELECT priority FROM jobs WHERE id='j-new'").fetchone() == (7,)
            reasons = [
                r[0] for r in conn.execute("SELECT reason FROM transitions WHERE job_id='j-new'")
            ]
            assert "priority 0 -> 7 by MQTT" in reasons
            audited = conn.execute(
                "SELECT outcome FROM command_audit WHERE command='set_priority' ORDER BY id"
            ).fetchall()
            outcomes = [o for (o,) in audited]
            assert outcomes == ["accepted", "rejected", "rejected", "accepted", "rejected"]
    finally:
        sub.stop()


def put(data: bytes, name: str) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    return {
        "sha256": sha,
        "size": len(data),
        "offset": 0,
        "data": base64.b64encode(data).decode(),
        "name": name,
    }


async def test_programs_lists_the_store_and_a_stored_one_is_printed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    stored_only = b"G28\nG1 X5 Y5\n"
    try:
        async with running_app(cell):
            await sub.online()
            r = await cmd.send("programs", {})
            assert r["outcome"] == "accepted" and r["result"] == [], r
            job = {"job": "j-1", "steps": [{"process": "print", "gcode": G, "name": "a.gcode"}]}
            assert (await cmd.send("submit", job))["outcome"] == "accepted"
            r = await cmd.send("put_program", put(stored_only, "bracket.gcode"))
            assert r["outcome"] == "accepted" and r["result"]["complete"], r
            sha = r["result"]["program"].removeprefix("sha256:")
            # Stored a minute apart (a file system's clock may give both the same tick).
            older = tmp_path / "state" / "programs" / hashlib.sha256(G.encode()).hexdigest()
            os.utime(older, (time.time() - 60, time.time() - 60))
            r = await cmd.send("programs", {})
            assert r["outcome"] == "accepted", r
            listed = {p["name"]: p for p in r["result"]}
            assert set(listed) == {"a.gcode", "bracket.gcode"}, r["result"]
            assert listed["a.gcode"]["last_job"] == "j-1"
            assert listed["a.gcode"]["sha256"] == hashlib.sha256(G.encode()).hexdigest()
            assert listed["bracket.gcode"]["size"] == len(stored_only)
            assert listed["bracket.gcode"]["last_job"] is None
            assert [p["name"] for p in r["result"]] == ["bracket.gcode", "a.gcode"]  # newest first
            assert r["page"] == {"limit": 100, "more": False, "after": None}
            # A page at a time: the cursor of the first page asks for the rest.
            first = await cmd.send("programs", {"limit": 1})
            assert [p["name"] for p in first["result"]] == ["bracket.gcode"]
            assert first["page"]["more"] is True
            rest = await cmd.send("programs", {"limit": 1, "after": first["page"]["after"]})
            assert [p["name"] for p in rest["result"]] == ["a.gcode"]
            assert rest["page"]["more"] is False
            code, out, err = await cli("programs", "--json", port=broker.port)
            assert code == 0 and json.loads(out) == r["result"], err
            r = await cmd.send("programs", {"after": "../etc"})
            assert r["outcome"] == "rejected" and "cursor" in r["reason"], r
            # One click in a library: the stored program by its hash, as a new job.
            steps = [{"process": "print", "file": f"sha256:{sha}"}]
            r = await cmd.send("submit", {"job": "bracket-again", "steps": steps})
            assert r["outcome"] == "accepted", r
            await sub.wait_for(
                lambda: any(m.json()["state"] == "done" for m in sub.on("bracket-again/events")),
                "the stored program printed",
            )
            r = await cmd.send("programs", {})
            assert {p["name"]: p["last_job"] for p in r["result"]}["bracket.gcode"] == (
                "bracket-again"
            )
        with db(tmp_path) as conn:  # a query is not audited
            assert conn.execute(
                "SELECT COUNT(*) FROM command_audit WHERE command='programs'"
            ).fetchone() == (1,)  # the one refused
    finally:
        sub.stop()
