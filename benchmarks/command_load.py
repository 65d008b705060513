"""Emergency stops while 8 clients flood the command path; memory and queries/s.

    python benchmarks/command_load.py [--quick] [--jobs N] [--seconds S]

The demo cell (configs/demo.toml: a Modbus PLC, two serial machines on
pseudo-terminals, an OPC UA robot, all simulated) runs in this process against
a local Mosquitto, with N jobs queued. Eight client processes each send the
largest submit the payload cap allows (QoS 1, one at a time) and `jobs`
queries, for S seconds, while this process sends an emergency stop every
0.2 s. E-stop latency is from the publish to the moment the last device's
`emergency_stop()` returned (the stop written to the device), both on the
same monotonic clock. The baseline is the same e-stops with no flood, in the
same run. Also: resident size before, at the peak and after the flood; `jobs`
replies per second; what was refused (rate, busy, size). Medians and p99 over
the e-stops; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).parent))
from telemetry import Broker  # this directory's broker helper

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
CAP = 4 << 20  # the default [commands] payload_max_bytes
ESTOP_EVERY_S = 0.2


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def client(port: int, name: str) -> paho.Client:
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5
    )
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def flooder(port: int, base: str, user: str, seconds: float, out: Any) -> None:
    """One flooding client (a process of its own: its work is not the daemon's). Niced:
    clients run elsewhere in a real cell; here they share the daemon's CPUs."""
    os.nice(10)
    line = "G1 X10 Y10 F1200\n"
    gcode = line * ((CAP - 2048) // (len(line) + 1))
    stats: Counter[str] = Counter()
    lock = threading.Lock()

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        kind = body["command"] + ":" + body["outcome"]
        if body["outcome"] == "rejected":
            kind += ":" + body["reason"].split(":", 1)[0].split(" ", 1)[0]
        with lock:
            stats[kind] += 1

    c = client(port, f"flood-{user}")
    c.on_message = on_message
    c.subscribe(f"{base}/replies/{user}/#", 1)
    time.sleep(0.5)
    n = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        n += 1
        body = {
            "job": f"{user}-{n}",
            "steps": [{"process": "print", "gcode": gcode, "setup": {"material": "unobtainium"}}],
        }
        info = c.publish(f"{base}/cmd/{user}/submit", json.dumps(body), qos=1)
        info.wait_for_publish(30)
        for _ in range(10):
            c.publish(f"{base}/cmd/{user}/jobs", b'{"limit": 100}', qos=1).wait_for_publish(30)
    time.sleep(3.0)  # the last replies
    c.disconnect()
    c.loop_stop()
    out.put(dict(stats))


class Stops:
    """Wraps every connected driver's emergency_stop to note when it returned, and the
    command handler to note when the e-stop arrived and when its handling began."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.arrived: float | None = None
        self.began: float | None = None
        self.channel = ""

    def watch(self, handler: Any) -> None:
        inner = handler.handle

        async def handle(msg: Any) -> None:
            if msg.topic.endswith("/estop"):
                self.arrived, self.began = msg.received, time.monotonic()
                self.channel = msg.channel
            await inner(msg)

        handler.handle = handle

    def wrap(self, runners: dict[str, Any]) -> None:
        for dev, r in runners.items():
            d = r.driver
            if d is None or getattr(d, "_bench_wrapped", False):
                continue
            inner = d.emergency_stop

            async def stop(inner: Any = inner, dev: str = dev) -> None:
                await inner()
                self.done[dev] = time.monotonic()

            d.emergency_stop = stop
            d._bench_wrapped = True


@dataclass
class Split:
    """Where one e-stop's time went: publish → arrival at the daemon (broker, socket),
    arrival → its handling began (lane, event loop), then → the last device's stop."""

    total: float
    wire: float
    queue: float
    act: float
    channel: str


async def estops(
    app: Any, sender: paho.Client, base: str, seconds: float, stops: Stops
) -> list[Split]:
    lat: list[Split] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        runners = app.supervisor.runners
        stops.wrap(runners)
        stops.done.clear()
        stops.arrived = stops.began = None
        targets = {dev for dev, r in runners.items() if r.driver is not None}
        t0 = time.monotonic()
        sender.publish(f"{base}/cmd/safety/estop", b'{"reason": "bench"}', qos=1)
        deadline = t0 + 5.0
        while set(stops.done) < targets and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if targets and set(stops.done) >= targets and stops.arrived and stops.began:
            end = max(stops.done[d] for d in targets)
            a, b = stops.arrived, stops.began
            lat.append(Split(end - t0, a - t0, b - a, end - b, stops.channel))
        await asyncio.sleep(max(0.0, ESTOP_EVERY_S - (time.monotonic() - t0)))
    return lat


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


def ms(x: float) -> str:
    return f"{x * 1000:7.1f} ms"


async def run(args: argparse.Namespace) -> None:
    from cellctl import config as config_mod
    from cellctl import logs
    from cellctl.app import App

    work = Path(tempfile.mkdtemp(prefix="cellctl-bench-"))
    broker = Broker(work)
    text = DEMO.read_text()
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    if args.no_urgent:  # the estop on the main connection only, as before issue 23's end
        mqtt += "urgent_connection = false\n"
    text = re.sub(r"(?ms)^\[mqtt\].*\Z", mqtt, text)
    text = text.replace('level = "info"', 'level = "error"')
    (work / "demo.toml").write_text(text)
    cell = config_mod.load(work / "demo.toml")
    logs.configure("error", "console")
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1000)
    base = f"cellctl/v2/{cell.name}"
    if args.slow_ms is not None:  # asyncio's debug mode names each callback that held the loop
        import logging

        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = args.slow_ms / 1000
        slow = logging.getLogger("asyncio")
        slow.setLevel(logging.WARNING)
        slow.propagate = False
        slow.addHandler(logging.StreamHandler(sys.stdout))
    app = App(cell)
    task = asyncio.create_task(app.run())
    try:
        assert app.mqtt is not None
        async with asyncio.timeout(60):
            await app.mqtt.ready.wait()
            await app.supervisor.started.wait()
            for r in app.supervisor.runners.values():
                await r.connected.wait()
        sender = client(broker.port, "bench-safety")
        # N jobs queued (a setup no device has), from users of 90 each: under the rate.
        replies: Counter[str] = Counter()
        sender.on_message = lambda c, u, m: replies.update([json.loads(m.payload)["outcome"]])
        sender.subscribe(f"{base}/replies/#", 1)
        await asyncio.sleep(0.5)
        for i in range(args.jobs):
            step = {"process": "print", "gcode": "G28\n", "setup": {"material": "x"}}
            body = {"job": f"q-{i}", "steps": [step]}
            sender.publish(f"{base}/cmd/loader{i // 90}/submit", json.dumps(body), qos=1)
            if i % 20 == 19:
                while sum(replies.values()) < i - 20:
                    await asyncio.sleep(0.05)
        while sum(replies.values()) < args.jobs:
            await asyncio.sleep(0.05)
        print(f"{args.jobs} jobs queued: {dict(replies)}")
        sender.unsubscribe(f"{base}/replies/#")

        stops = Stops()
        assert app.mqtt.commands is not None
        stops.watch(app.mqtt.commands)
        idle_s = await estops(app, sender, base, args.idle_seconds, stops)
        gc.collect()
        rss0 = rss_mib()
        peak = [rss0]
        sampling = True

        def sample() -> None:
            while sampling:
                peak[0] = max(peak[0], rss_mib())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [
            ctx.Process(target=flooder, args=(broker.port, base, f"flood{k}", args.seconds, out))
            for k in range(8)
        ]
        for p in procs:
            p.start()
        await asyncio.sleep(1.5)  # the clients connect and start
        flood_s = await estops(app, sender, base, args.seconds - 1.5, stops)
        idle = [x.total for x in idle_s]
        flood = [x.total for x in flood_s]
        totals: Counter[str] = Counter()
        for _ in procs:
            totals.update(await asyncio.to_thread(out.get, True, 120))
        for p in procs:
            await asyncio.to_thread(p.join, 30)
        handler = app.mqtt.commands
        assert handler is not None
        print(f"flood over; e-stop median {ms(statistics.median(flood))}", flush=True)
        # The broker may still hold flood messages for the daemon's main connection (it is
        # not read while an estop is in hand): a query sent now is read after all of them.
        t_flood = time.monotonic()
        marked: list[bytes] = []
        sender.on_message = lambda c, u, m: marked.append(m.payload)
        sender.subscribe(f"{base}/replies/marker/#", 1)
        await asyncio.sleep(0.3)
        sender.publish(f"{base}/cmd/marker/jobs", b'{"limit": 1}', qos=1)
        while not marked and time.monotonic() < t_flood + 120:
            await asyncio.sleep(0.05)
        caught_up = time.monotonic() - t_flood
        print(f"the main connection read the last flood message {caught_up:.1f} s after it ended")
        trims = handler.trims
        drain_until = time.monotonic() + 60  # the queues drain, or a minute passes
        while any(len(q) for q in handler.lanes.values()) and time.monotonic() < drain_until:
            await asyncio.sleep(0.1)
        waiting = sum(len(q) for q in handler.lanes.values())
        print(f"commands queued once the flood ended and the queues drained (≤ 60 s): {waiting}")
        sampling = False
        sampler.join()
        gc.collect()
        trim_until = time.monotonic() + 15  # it trims its heap 1 s after the lanes emptied
        while handler.trims == trims and time.monotonic() < trim_until:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        rss_after = rss_mib()

        med_i, med_f = statistics.median(idle), statistics.median(flood)
        devices = len(cell.devices)
        print(f"\ne-stop latency, publish → last device's stop written ({devices} devices)")
        print(f"  baseline, no flood  (n={len(idle):3d}): median {ms(med_i)}  p99 {ms(p99(idle))}")
        print(
            f"  8-client flood      (n={len(flood):3d}): median {ms(med_f)}  p99 {ms(p99(flood))}"
            f"  max {ms(max(flood))}"
        )
        slowest = ", ".join(f"{x * 1000:.0f}" for x in sorted(flood)[-5:])
        print(f"  slowest under the flood: {slowest} ms")
        for label, runs in (("no flood", idle_s), ("flood", flood_s)):
            parts = "  ".join(
                f"{what} {ms(statistics.median(getattr(x, what) for x in runs)).strip()}"
                f" / {ms(p99([getattr(x, what) for x in runs])).strip()}"
                for what in ("wire", "queue", "act")
            )
            via = Counter(x.channel for x in runs)
            print(f"  {label:9s} median / p99: {parts}; delivered by {dict(via)}")
        if app.mqtt.intake is not None:
            print(f"  twin copies dropped: {app.mqtt.intake.twins.dropped}")
        print(
            f"  ratio flood/baseline: median {med_f / med_i:.1f}×"
            f"  p99 {p99(flood) / p99(idle):.1f}×"
        )
        print("\nresident size of the daemon process")
        print(
            f"  before {rss0:.0f} MiB, peak {peak[0]:.0f} MiB (+{peak[0] - rss0:.0f}),"
            f" after {rss_after:.0f} MiB (+{rss_after - rss0:.0f})"
        )
        queries = totals["jobs:accepted"]
        rate = queries / args.seconds
        print(f"\njobs queries answered: {queries} in {args.seconds:.0f} s = {rate:.0f}/s")
        print(f"replies seen by the flooders: {dict(sorted(totals.items()))}")
        print(f"refused at the door (size, rate, lane full): {handler.refused}")
        print(f"heap trims (cellctl.memtrim): {handler.trims}")
    finally:
        app.request_stop()
        async with asyncio.timeout(30):
            await task
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval")
    ap.add_argument("--no-urgent", action="store_true", help="no urgent connection")
    ap.add_argument("--slow-ms", type=float, default=None, help="log callbacks slower than this")
    args = ap.parse_args()
    args.jobs = args.jobs if args.jobs is not None else (200 if args.quick else 2000)
    args.seconds = args.seconds if args.seconds is not None else (6.0 if args.quick else 20.0)
    args.idle_seconds = 3.0 if args.quick else 8.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
