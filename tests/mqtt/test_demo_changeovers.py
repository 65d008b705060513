"""The demo cell (configs/demo.toml: Marlin printer-1 and printer-2 at time_factor 20
and 15 (printer-3 out of service here), GRBL mill at 10, PLC and robot simulators) as a
subprocess with `[scheduler] method = "planner"`, a job mix needing changeovers
submitted over MQTT, and a scripted operator answering each changeover request with
`answer … setup{}`. Wall time about 20 s on an idle machine; every wait is bounded
(online 15 s, the work 60 s, the stop 20 s, the baseline's run 15 s: 110 s, inside the
suite's 120 s).

Every job ends done; no changeover is asked for a setup already loaded; the changeovers
done are the plan's (one material change on one of the two PLA printers, T1→T2 on the
mill); their minutes are below what the same mix needs in arrival order, and strictly
below what the baseline dispatcher needs on the same mix and the same two printers: run
in-process (jobs.baseline_operator, about 2 s) with an operator answering its
pre-flight holds and loading what a silently waiting step names. The baseline gives
one PETG file to each printer (both held by pre-flight, both changed over: 20 minutes
of material changes); the planner groups them on one printer (10 minutes).

With one printer the baseline can match the planner (a held step does not keep its
printer, so the PLA files run while the PETG ones wait for the operator): that is why
two printers stay in service."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from jobs.baseline_operator import mill, run_baseline
from jobs.conftest import gcode, printer
from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber
from support.daemon import spawn

from cellctl.config import load
from cellctl.scheduler_config import SchedulerSection
from cellctl.telemetry.topics import Topics

DEMO = Path(__file__).parents[2] / "configs" / "demo.toml"
PRINTS = ["PLA", "PETG", "PLA", "PETG", "PLA"]
CUTS = ["T2", "T1", "T2"]
WORKERS = ("printer-1", "printer-2", "mill-1")


def arrival_order_minutes(start: str, needs: list[str], seconds: int) -> float:
    """Changeover minutes when each job is done in turn, changing over as it comes."""
    total, loaded = 0, start
    for need in needs:
        if need != loaded:
            total += seconds
            loaded = need
    return total / 60


async def test_demo_cell_plans_its_changeovers(tmp_path: Path, broker: Mosquitto) -> None:
    text = DEMO.read_text()
    text = re.sub(
        r"(?ms)^\[mqtt\].*\Z", f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n', text
    )
    # The demo's own [scheduler] (the planner, with demo-speed changeover times) gives
    # way to this test's: the default times, which the figures below are priced at.
    text = re.sub(r"(?ms)^\[scheduler\].*?(?=^\[)", "", text)
    text += '\n[scheduler]\nmethod = "planner"\nbudget_s = 0.1\nnotice_s = 0\n'
    config = tmp_path / "demo.toml"
    config.write_text(text)
    cell = load(config)
    topics = Topics(cell.name)
    sub = await Subscriber(broker.port, [topics.everything, "replies/#"]).start()
    cmd = Commander(sub, topics)
    proc = spawn(config, tmp_path / "daemon.log")
    answered: list[tuple[str, dict[str, str]]] = []
    try:
        await sub.online()
        # Two PLA printers and the mill: printer-3 (PETG already loaded) would need no
        # changeover at all.
        r = await cmd.send("out_of_service", {"device": "printer-3", "reason": "not in this test"})
        assert r["outcome"] == "accepted", r
        for dev in WORKERS:  # every job in before the first plan
            r = await cmd.send("out_of_service", {"device": dev, "reason": "loading work"})
            assert r["outcome"] == "accepted", r
        for i, material in enumerate(PRINTS):
            step = {"process": "print", "gcode": gcode(20, material=material)}
            r = await cmd.send("submit", {"job": f"print-{i}", "steps": [step]})
            assert r["outcome"] == "accepted", r
        for i, tool in enumerate(CUTS):
            step = {
                "process": "mill",
                "gcode": "G21 G90\nG0 X1 Y1\nG0 X0 Y0\n",
                "setup": {"tool": tool},
            }
            r = await cmd.send("submit", {"job": f"cut-{i}", "steps": [step]})
            assert r["outcome"] == "accepted", r
        for dev in WORKERS:
            r = await cmd.send("into_service", {"device": dev})
            assert r["outcome"] == "accepted", r
        setups = {
            "printer-1": {"material": "PLA", "colour": "black"},
            "printer-2": {"material": "PLA", "colour": "red"},
            "mill-1": {"tool": "T1"},
        }
        seen = 0

        def ended() -> set[str]:
            return {
                m.topic.split("/")[-2]
                for m in sub.on("/events")
                if "/jobs/" in m.topic and m.json()["state"] in ("done", "failed", "cancelled")
            }

        jobs = {f"print-{i}" for i in range(len(PRINTS))} | {f"cut-{i}" for i in range(len(CUTS))}
        async with asyncio.timeout(60):
            while ended() != jobs:
                asks = [m.json() for m in sub.on("/requests") if m.json()["kind"] == "changeover"]
                for req in asks[seen:]:
                    seen += 1
                    if req["details"]["withdrawn"]:
                        continue
                    dev, load_ = req["device"], req["details"]["load"]
                    for key, value in load_.items():
                        assert setups[dev].get(key) != value, f"asked for a loaded setup: {req}"
                    r = await cmd.send(
                        "answer", {"device": dev, "kind": "changeover", "setup": load_}
                    )
                    assert r["outcome"] == "accepted", r
                    setups[dev].update(load_)
                    answered.append((dev, load_))
                await asyncio.sleep(0.1)
        done = {
            m.topic.split("/")[-2]
            for m in sub.on("/events")
            if "/jobs/" in m.topic and m.json()["state"] == "done"
        }
        assert done == jobs, sorted(jobs - done)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                while proc.poll() is None:
                    await asyncio.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            sub.stop()
    # One material change on one of the printers (the planner picks which), one tool
    # change on the mill.
    printers = [(d, c) for d, c in answered if d.startswith("printer-")]
    assert [c for _, c in printers] == [{"material": "PETG"}], answered
    assert [(d, c) for d, c in answered if d == "mill-1"] == [("mill-1", {"tool": "T2"})]
    rules = SchedulerSection()
    per_key = {k: rules.key_change(k).seconds for k in ("material", "tool")}
    planned = sum(per_key[k] for _, change in answered for k in change) / 60
    # In arrival order, alternating the five files over the two printers.
    arrival = (
        arrival_order_minutes("PLA", PRINTS[0::2], per_key["material"])
        + arrival_order_minutes("PLA", PRINTS[1::2], per_key["material"])
        + arrival_order_minutes("T1", CUTS, per_key["tool"])
    )
    pla = {"material": "PLA", "nozzle": "0.4"}
    baseline = await run_baseline(
        tmp_path / "baseline",
        {
            "printer-1": printer(setup=dict(pla)),
            "printer-2": printer(setup=dict(pla)),
            "mill-1": mill({"tool": "T1", "fixture": "vise"}),
        },
        PRINTS,
        CUTS,
        bound_s=15,
    )
    base = baseline.seconds(per_key) / 60
    print(
        f"changeover minutes: planned {planned:g} ({len(answered)} changeovers), "
        f"in arrival order {arrival:g}, baseline {base:g} ({len(baseline.changeovers)} "
        f"changeovers, {baseline.holds} pre-flight holds answered)"
    )
    assert planned < arrival
    assert planned < base and baseline.holds >= 1
