"""A slicer's upload prints on the demo cell: the real daemon (configs/demo.toml, simulated
Marlin printer) on a real Mosquitto, the panel, and OctoPrint clients the project did not
write (octoclient from PyPI, and curl as docs/panel.md shows)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path

import octoclient
import pytest
from jobs.conftest import gcode
from mqtt_broker import Mosquitto, free_port
from mqtt_rig import Commander, Subscriber
from panel_rig import BOUND, cellctl, demo_config, new_key, process

from cellctl.config import load_settings
from cellctl.panel.serve import running
from cellctl.telemetry.topics import Topics


async def job_done(sub: Subscriber, job_id: str) -> None:
    await sub.wait_for(
        lambda: any(m.json().get("state") == "done" for m in sub.on(f"jobs/{job_id}/events")),
        f"job {job_id} done",
        within_s=BOUND,
    )


def origins(sub: Subscriber, outcome: str) -> list[dict[str, object]]:
    """The origins of the audit's submit commands with this outcome."""
    bodies = [m.json() for m in sub.on("/audit")]
    return [b["origin"] for b in bodies if b["command"] == "submit" and b["outcome"] == outcome]


@pytest.mark.timeout(300)  # the whole demo cell starts, prints three jobs, stops
async def test_slicer_uploads_print_on_the_demo_cell(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = demo_config(tmp_path, broker.port)
    alice = await asyncio.to_thread(new_key, cfg, "alice")
    part = tmp_path / "part.gcode"
    part.write_text(gcode(20))
    topics = Topics("demo")
    sub = await Subscriber(broker.port, [topics.everything]).start()
    try:
        async with process(["run", str(cfg)], tmp_path / "daemon.log"):
            await sub.online()
            async with running(cfg, load_settings(cfg)) as url:
                # octoclient: as a slicer's "upload and print" does it.
                client = await asyncio.to_thread(octoclient.OctoClient, url=url, apikey=alice)
                assert client.version["api"] == "0.1"
                answer = await asyncio.to_thread(client.upload, str(part), print=True)
                assert answer["done"] is True and answer["effectivePrint"] is True
                assert answer["files"]["local"]["name"] == "part.gcode"
                job = answer["job"]
                digest = hashlib.sha256(part.read_bytes()).hexdigest()
                assert job["id"] == f"part-{digest[:12]}"
                assert job["steps"][0]["process"] == "print"
                # The setup comes from the slicer's metadata, as for a hot-folder drop.
                assert job["steps"][0]["setup"] == {"material": "PLA", "nozzle": "0.4"}
                await job_done(sub, job["id"])
                done = [m.json() for m in sub.on(f"jobs/{job['id']}/events")]
                # The demo has two PLA 0.4 printers (black and red): the file names no
                # colour, so either may take it; the PETG one may not.
                ran_on = {e.get("device") for e in done} - {None}
                assert ran_on and ran_on <= {"printer-1", "printer-2"}, ran_on

                # curl, exactly as docs/panel.md shows it; `path` is a label in the job id.
                other = tmp_path / "bracket.gcode"
                other.write_text(gcode(12))
                curl = [
                    "curl", "-sS", "-H", f"X-Api-Key: {alice}",
                    "-F", f"file=@{other}", "-F", "print=true", "-F", "path=fixtures/../left",
                    "-w", "\n%{http_code}", f"{url}/api/files/local",
                ]  # fmt: skip
                out = await asyncio.to_thread(
                    subprocess.run, curl, capture_output=True, text=True, timeout=BOUND
                )
                body, _, code = out.stdout.rpartition("\n")
                assert code == "201", out
                curl_job = json.loads(body)["job"]
                assert curl_job["id"].startswith("fixtures_left_bracket-")
                await job_done(sub, curl_job["id"])

                # A file the cell refuses (sliced, but its end is missing): 409, its reason.
                short = tmp_path / "short.gcode"
                short.write_text(gcode(10).split("; prusaslicer_config = end")[0])
                refused = await asyncio.to_thread(
                    subprocess.run,
                    [*curl[:4], "-F", f"file=@{short}", "-F", "print=true", *curl[-3:]],
                    capture_output=True,
                    text=True,
                    timeout=BOUND,
                )
                body, _, code = refused.stdout.rpartition("\n")
                assert code == "409", refused
                assert "looks cut short" in json.loads(body)["error"]

                # A per-device URL: only that device may run it; one that cannot, refused.
                for device, want in [("printer-1", "201"), ("mill-1", "409")]:
                    sent = await asyncio.to_thread(
                        subprocess.run,
                        [*curl[:4], "-F", f"file=@{part}", "-F", "print=true", "-w",
                         "\n%{http_code}", f"{url}/device/{device}/api/files/local"],
                        capture_output=True, text=True, timeout=BOUND,
                    )  # fmt: skip
                    body, _, code = sent.stdout.rpartition("\n")
                    assert code == want, sent
                    if device == "printer-1":
                        pinned = json.loads(body)["job"]
                        assert pinned["id"] == f"part_printer-1-{digest[:12]}"
                        assert pinned["steps"][0]["target"] == "printer-1"
                        await job_done(sub, pinned["id"])
                    else:
                        why = "device 'mill-1' cannot do process 'print'"
                        assert why in json.loads(body)["error"]

            # The audit names the user the panel verified and the panel's own user.
            # Audit records are events (spooled): they may trail the replies a little.
            await sub.wait_for(
                lambda: len(origins(sub, "accepted")) == 3 and len(origins(sub, "rejected")) == 2,
                "the audit of three accepted and two refused submits",
            )
            accepted = origins(sub, "accepted")
            assert len(accepted) == 3, accepted
            assert all(o["user"] == "alice" and o["via"] == "panel" for o in accepted)
            refused = origins(sub, "rejected")
            assert [(o["user"], o["via"]) for o in refused] == [("alice", "panel")] * 2

            # The cell enforces it too: only a `frontend` user may speak for another,
            # and then the other's roles decide.
            # One Commander per user: its correlation data count from 1.
            as_user = {u: Commander(sub, topics, user=u) for u in ("mallory", "panel")}
            for user, behalf, why in [
                ("mallory", "alice", "user 'mallory' may not act on behalf of 'alice'"),
                ("panel", "bob", "user 'bob' lacks permission 'submit'"),
            ]:
                cmd = as_user[user]
                body = {"job": "x", "steps": [{"process": "print"}], "on_behalf_of": behalf}
                reply = await cmd.send("submit", body)
                assert reply["outcome"] == "rejected" and reply["reason"].startswith(why), reply
            panel_only = await as_user["panel"].send(
                "submit", {"job": "x", "steps": [{"process": "print"}]}
            )
            assert panel_only["outcome"] == "rejected"  # frontend alone submits nothing
            # An emergency stop is never refused for its on_behalf_of: it acts as the sender.
            stop = {"reason": "test", "on_behalf_of": "alice"}
            reply = await as_user["mallory"].send("estop", stop)
            assert reply["outcome"] == "accepted", reply

            def estops() -> list[dict[str, dict[str, object]]]:
                return [m.json() for m in sub.on("/audit") if m.json()["command"] == "estop"]

            await sub.wait_for(lambda: bool(estops()), "the estop's audit record")
            [last] = estops()
            assert last["origin"]["user"] == "mallory" and last["origin"].get("via") is None
    finally:
        sub.stop()


@pytest.mark.timeout(300)
async def test_the_demo_as_the_readme_runs_it_on_its_embedded_broker(tmp_path: Path) -> None:
    """The README's steps: the demo's own broker (amqtt, MQTT 3.1.1 only), the panel, curl."""
    cfg = demo_config(tmp_path, free_port(), embedded=True)
    alice = await asyncio.to_thread(new_key, cfg, "alice")
    part = tmp_path / "my-part.gcode"
    part.write_text(gcode(15))
    async with process(["run", str(cfg)], tmp_path / "daemon.log"):
        async with running(cfg, load_settings(cfg)) as url:
            argv = ["curl", "-sS", "-H", f"X-Api-Key: {alice}", "-F", f"file=@{part}",
                    "-F", "print=true", "-w", "\n%{http_code}",
                    f"{url}/api/files/local"]  # fmt: skip
            for _ in range(int(BOUND)):  # the daemon starts its broker: until it answers
                out = await asyncio.to_thread(
                    subprocess.run, argv, capture_output=True, text=True, timeout=BOUND
                )
                body, _, code = out.stdout.rpartition("\n")
                if code != "503":
                    break
                await asyncio.sleep(1)
            assert code == "201", out
            job_id = json.loads(body)["job"]["id"]
            for _ in range(int(BOUND)):
                done = await asyncio.to_thread(cellctl, "jobs", str(cfg), "--job", job_id, "--json")
                if done.returncode == 0 and json.loads(done.stdout)[0]["state"] == "done":
                    break
                await asyncio.sleep(1)
            else:
                raise AssertionError(f"job {job_id} not done: {done.stdout} {done.stderr}")
