"""Chunked program upload over a real broker: 50 MB with a chunk lost and resent, a wrong
hash refused, a stored program then named by a submit."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, write_config

from cellctl.telemetry.topics import Topics

MIB = 1 << 20


def chunk(data: bytes, sha: str, offset: int, size: int = MIB) -> dict[str, Any]:
    return {
        "sha256": sha,
        "size": len(data),
        "offset": offset,
        "data": base64.b64encode(data[offset : offset + size]).decode(),
        "name": "part.gcode",
    }


def gcode(total: int) -> bytes:
    block = b"".join(b"G1 X%d.%d Y%d F1200\n" % (i, i % 10, i % 97) for i in range(40_000))
    return (block * (total // len(block) + 1))[:total]


async def test_50mb_in_chunks_one_lost_and_resent(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [f"{topics.base}/replies/#", topics.status]).start()
    cmd = Commander(sub, topics)
    data = gcode(50 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    lost = 17 * MIB
    try:
        async with running_app(cell):
            await sub.online()
            r: dict[str, Any] = {}
            for offset in range(0, len(data), MIB):
                if offset == lost:
                    continue  # this chunk never reaches the cell
                r = await cmd.send("put_program", chunk(data, sha, offset))
                assert r["outcome"] == "accepted", r["reason"]
                sub.messages.clear()  # the replies alone would hold the test's memory
            assert r["result"] == {
                "program": f"sha256:{sha}",
                "received": len(data) - MIB,
                "complete": False,
                "missing": [[lost, lost + MIB]],
            }
            # A chunk sent twice changes nothing.
            again = await cmd.send("put_program", chunk(data, sha, 0))
            assert again["result"]["received"] == len(data) - MIB
            r = await cmd.send("put_program", chunk(data, sha, lost))
            assert r["outcome"] == "accepted", r
            assert r["result"] == {
                "program": f"sha256:{sha}",
                "received": len(data),
                "complete": True,
                "missing": [],
            }
            stored = cell.state_dir / "programs" / sha
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
            assert not list((cell.state_dir / "uploads").glob("*.part"))
            # Stored already: the first chunk alone is answered complete.
            r = await cmd.send("put_program", chunk(data, sha, 0))
            assert r["result"]["complete"] is True and r["result"]["received"] == len(data)
    finally:
        sub.stop()


async def test_wrong_hash_refused_and_a_stored_program_submitted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [f"{topics.base}/replies/#", topics.status]).start()
    cmd = Commander(sub, topics)
    data = gcode(3 * MIB + 123)
    sha = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    try:
        async with running_app(cell):
            await sub.online()
            replies = [await cmd.send("put_program", chunk(data, wrong, o)) for o in (0, MIB)]
            assert all(r["outcome"] == "accepted" for r in replies), replies
            r = await cmd.send("put_program", chunk(data, wrong, 2 * MIB, 2 * MIB))
            assert r["outcome"] == "rejected" and r["reason"].startswith("sha256 mismatch"), r
            assert not (cell.state_dir / "programs" / wrong).exists()
            # The partial upload was discarded: the same chunk starts a new one.
            r = await cmd.send("put_program", chunk(data, wrong, 0))
            assert r["outcome"] == "accepted" and r["result"]["received"] == MIB, r
            # Bad chunks are refused with a reason, and lose nothing.
            bad = {**chunk(data, sha, 0), "data": "not base64!"}
            r = await cmd.send("put_program", bad)
            assert r["outcome"] == "rejected" and "base64" in r["reason"], r
            r = await cmd.send("put_program", {**chunk(data, sha, 0), "offset": len(data)})
            assert r["outcome"] == "rejected" and "past the file's size" in r["reason"], r
            r = await cmd.send("put_program", {**chunk(data, sha, 0), "sha256": "ABC"})
            assert r["outcome"] == "rejected" and "sha256" in r["reason"], r
            # In any order; then a submit names the program.
            for offset in (3 * MIB, MIB, 0, 2 * MIB):
                r = await cmd.send("put_program", chunk(data, sha, offset))
                assert r["outcome"] == "accepted", r
            assert r["result"]["complete"] is True
            job = {
                "job": "big-1",
                "steps": [{"process": "print", "file": f"sha256:{sha}", "setup": {"x": "y"}}],
            }
            r = await cmd.send("submit", job)
            assert r["outcome"] == "accepted", r
            assert r["result"]["steps"][0]["program"]["sha256"] == sha
    finally:
        sub.stop()
