"""A changeover over MQTT: the live planner publishes the request, `answer` with
`setup{}` records what was loaded, and the job runs (real broker, real App)."""

from __future__ import annotations

from pathlib import Path

from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, write_config

from cellctl.telemetry.topics import Topics

PLANNER = '[scheduler]\nmethod = "planner"\nbudget_s = 0.05\n'


async def test_changeover_request_answered_with_setup(tmp_path: Path, broker: Mosquitto) -> None:
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1, telemetry=PLANNER))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    try:
        async with running_app(cell):
            await sub.online()
            job = {
                "job": "petg-1",
                "steps": [{"process": "print", "gcode": "G28\n", "setup": {"material": "PETG"}}],
            }
            r = await cmd.send("submit", job)
            assert r["outcome"] == "accepted", r

            def asked() -> list[dict]:
                return [m.json() for m in sub.on("d1/requests") if m.json()["kind"] == "changeover"]

            await sub.wait_for(lambda: bool(asked()), "a changeover request on d1")
            req = asked()[0]
            assert req["step"] == "petg-1/0" and req["details"]["load"] == {"material": "PETG"}
            # A changeover answer without setup{} is refused and changes nothing.
            r = await cmd.send("answer", {"device": "d1", "kind": "changeover"})
            assert r["outcome"] == "rejected" and "setup" in r["reason"], r
            # Unknown keys are still refused (the envelope did not loosen).
            r = await cmd.send("answer", {"device": "d1", "kind": "changeover", "setup": 3})
            assert r["outcome"] == "rejected", r
            r = await cmd.send(
                "answer", {"device": "d1", "kind": "changeover", "setup": {"material": "PETG"}}
            )
            assert r["outcome"] == "accepted", r
            assert r["result"]["setup"]["material"] == "PETG"
            await sub.wait_for(
                lambda: any(m.json()["state"] == "done" for m in sub.on("petg-1/events")),
                "job petg-1 done after the changeover",
            )
            # The existing form still answers holds: no held step here, so a clear refusal.
            r = await cmd.send("answer", {"device": "d1", "kind": "load_material"})
            assert r["outcome"] == "rejected" and "no step is held" in r["reason"], r
    finally:
        sub.stop()


async def test_clear_bed_answer_opens_the_gate(tmp_path: Path, broker: Mosquitto) -> None:
    gate = '[scheduler]\nbed_clearing = ["d1"]\n'
    cell = load(write_config(tmp_path / "cell.toml", broker.port, devices=1, telemetry=gate))
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)

    def beds() -> list[dict]:
        return [m.json() for m in sub.on("d1/requests") if m.json()["kind"] == "clear_bed"]

    def done(job: str) -> bool:
        return any(m.json()["state"] == "done" for m in sub.on(f"{job}/events"))

    try:
        async with running_app(cell):
            await sub.online()
            for job in ("a", "b"):
                r = await cmd.send(
                    "submit", {"job": job, "steps": [{"process": "print", "gcode": "G28\n"}]}
                )
                assert r["outcome"] == "accepted", r
            await sub.wait_for(lambda: len(beds()) == 1, "a clear_bed request after the first")
            first = beds()[0]
            assert first["details"]["cleared"] is False
            ran = "a" if done("a") else "b"
            other = "b" if ran == "a" else "a"
            assert first["step"] == f"{ran}/0" and not done(other)
            r = await cmd.send("answer", {"device": "d1", "kind": "clear_bed"})
            assert r["outcome"] == "accepted", r
            await sub.wait_for(lambda: done(other), "the second job after the bed was cleared")
            await sub.wait_for(lambda: len(beds()) == 3, "the second part's clear_bed request")
            assert [b["details"]["cleared"] for b in beds()] == [False, True, False]
    finally:
        sub.stop()
