"""Telemetry throughput and latency through one local Mosquitto, against same-run baselines.

    python benchmarks/telemetry.py [--quick]

Baselines: mosquitto_pub (-l, the C client, for reference), bare paho with `loop_start`.
Measured: cellctl's link alone (paho on the asyncio loop via socket callbacks:
the drive mode chosen), the samples path (bus → policy → encoding → link, QoS 0),
the events path (bus → sequence → SQLite spool with group commit → QoS 1 →
PUBACK → delete), and driver-event → subscriber latency at 1,000 events/s.
A `mosquitto_sub` process counts messages, so every run is end to end.
Figures are medians over the repeats; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cellctl.config import MqttSection, TelemetrySection
from cellctl.events import EventBus
from cellctl.model import Alarm, Sample, Samples
from cellctl.store import Store
from cellctl.telemetry.encoding import JsonEncoding, Kind, Outgoing
from cellctl.telemetry.link import LinkSettings, MqttLink
from cellctl.telemetry.pipeline import Pipeline
from cellctl.telemetry.spool import Spool
from cellctl.telemetry.topics import Topics

PAYLOAD = b'{"v":1,"ts":1700000000.0,"device":"d1","samples":[{"name":"temp","value":21.5}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n"
        )
        self.proc = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Counter:
    """mosquitto_sub counting N messages; `-F %U %p` keeps receive times for latency."""

    def __init__(self, port: int, topic: str, n: int, qos: int, timed: bool = False) -> None:
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(n)]
        args += ["-q", str(qos), "-F", "%U %p" if timed else "%U"]
        # A file, not a pipe: a full pipe would stall mosquitto_sub and add its wait
        # to every latency.
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.DEVNULL)
        time.sleep(0.4)  # mosquitto_sub has no "subscribed" signal; a benchmark may wait

    def wait(self, timeout: float = 120, idle_s: float | None = None) -> bytes:
        """All N lines; with `idle_s`, whatever arrived once nothing came for that long."""
        deadline = time.monotonic() + timeout
        size, quiet_since = -1, time.monotonic()
        while self.proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                self.proc.kill()
                raise TimeoutError(f"mosquitto_sub did not get every message in {timeout:g} s")
            if idle_s is not None:
                grown = os.fstat(self.out.fileno()).st_size
                if grown != size:
                    size, quiet_since = grown, now
                elif now - quiet_since > idle_s:
                    self.proc.terminate()
                    self.proc.wait()
                    break
            time.sleep(0.05)
        self.out.seek(0)
        data = self.out.read()
        self.out.close()
        return data


def run_mosquitto_pub(port: int, n: int, qos: int) -> tuple[float, int]:
    """The ceiling, and how many arrived: at EOF `mosquitto_pub -l` drops what it has
    not sent yet (here: most of 100,000 QoS 1 lines), so the rate counts what arrived."""
    c = Counter(port, "bench/#", n, qos)
    data = b"\n".join([PAYLOAD] * n) + b"\n"
    t0 = time.time()
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "bench/x", "-l"]
    subprocess.run(
        [*args, "-q", str(qos)],
        input=data,
        check=True,
    )
    arrivals = c.wait(idle_s=2.0).split()
    return len(arrivals) / (float(arrivals[-1]) - t0), len(arrivals)


def run_paho_loop_start(port: int, n: int, qos: int) -> float:
    c = Counter(port, "bench/#", n, qos)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    # QoS 1: at most 1,000 unacknowledged, as cellctl's link and any careful user keep
    # it: paho rescans its whole queue on every PUBACK, so a 100,000-message burst
    # queued at once slows to a crawl (quadratic), which would flatter cellctl.
    window = threading.BoundedSemaphore(1000)
    client.on_publish = lambda *_: window.release() if qos else None
    t0 = time.perf_counter()
    for _ in range(n):
        if qos:
            window.acquire()
        client.publish("bench/x", PAYLOAD, qos=qos)
    c.wait()
    rate = n / (time.perf_counter() - t0)
    client.disconnect()
    client.loop_stop()
    return rate


async def _with_link(port: int, body: Callable[[MqttLink], Awaitable[float]]) -> float:
    link = MqttLink(LinkSettings(port=port, client_id=f"bench-{time.monotonic_ns()}"))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await link.wait_connected(10)
        try:
            return await body(link)
        finally:
            await link.close()
            task.cancel()


def run_link(port: int, n: int, qos: int) -> float:
    """cellctl's link alone: paho driven on the asyncio loop by socket callbacks."""
    out = Outgoing("bench/x", PAYLOAD, Kind.SAMPLES, qos=qos)

    async def body(link: MqttLink) -> float:
        acked = 0
        done = asyncio.Event()

        def on_ack(mid: int, ok: bool) -> None:
            nonlocal acked
            acked += 1
            if acked == n:
                done.set()

        link.on_ack = on_ack
        c = Counter(port, "bench/#", n, qos)
        t0 = time.perf_counter()
        sent = 0
        while sent < n:
            if qos and sent - acked >= 1000:
                await asyncio.sleep(0)  # inflight window full: let PUBACKs in
                continue
            link.publish(out)
            sent += 1
            if sent % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.to_thread(c.wait)
        return n / (time.perf_counter() - t0)

    return asyncio.run(_with_link(port, body))


async def _pipeline(
    port: int, workdir: Path, body: Callable[[EventBus, MqttLink, Spool], Awaitable[float]]
) -> float:
    topics = Topics("bench")
    bus = EventBus()
    sub = bus.subscribe("mqtt", lossless=True)
    db = workdir / f"bench-{time.monotonic_ns()}.db"
    async with Store(db) as store:
        link = MqttLink(LinkSettings(port=port, client_id=f"bench-{time.monotonic_ns()}"))
        pipe = await Pipeline.open(
            store,
            link,
            JsonEncoding(topics),
            TelemetrySection(),
            window=1000,
            spool_max=1_000_000,
            commit_s=MqttSection().spool_commit_s,
        )
        async with asyncio.TaskGroup() as tg:
            tasks = pipe.start(tg, sub)
            await link.wait_connected(10)
            try:
                return await body(bus, link, pipe.spool)
            finally:
                await link.close()
                for t in tasks:
                    t.cancel()


def run_samples_path(port: int, n: int, workdir: Path) -> float:
    async def body(bus: EventBus, link: MqttLink, spool: Spool) -> float:
        c = Counter(port, "cellctl/v2/bench/devices/+/samples", n, 0)
        t0 = time.perf_counter()
        for i in range(n):
            bus.publish(Samples("d1", (Sample("temp", float(i)),)))
            if i % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.to_thread(c.wait)
        return n / (time.perf_counter() - t0)

    return asyncio.run(_pipeline(port, workdir, body))


def run_events_path(port: int, n: int, workdir: Path) -> float:
    async def body(bus: EventBus, link: MqttLink, spool: Spool) -> float:
        c = Counter(port, "cellctl/v2/bench/devices/+/alarms", n, 1)
        t0 = time.perf_counter()
        for i in range(n):
            bus.publish(Alarm("d1", f"A{i}", "bench"))
            if i % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.to_thread(c.wait)
        # Durable: delivered and committed (events may reach the broker before their commit).
        async with asyncio.timeout(60):
            while spool.counters.committed < n:
                await asyncio.sleep(0.001)
        return n / (time.perf_counter() - t0)

    return asyncio.run(_pipeline(port, workdir, body))


def run_latency(port: int, rate: int, seconds: float, workdir: Path) -> tuple[float, float]:
    n = int(rate * seconds)

    async def body(bus: EventBus, link: MqttLink, spool: Spool) -> float:
        c = Counter(port, "cellctl/v2/bench/devices/+/alarms", n, 1, timed=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(n):
            # Paced: event i is due at start + i/rate.
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            bus.publish(Alarm("d1", f"A{i}", "latency"))
        out = await asyncio.to_thread(c.wait)
        lat = []
        import json

        for line in out.decode().splitlines():
            recv, _, payload = line.partition(" ")
            lat.append((float(recv) - json.loads(payload)["ts"]) * 1000)
        lat.sort()
        run_latency.result = (lat[len(lat) // 2], lat[int(len(lat) * 0.99)])  # type: ignore[attr-defined]
        return 0.0

    asyncio.run(_pipeline(port, workdir, body))
    return run_latency.result  # type: ignore[attr-defined,no-any-return]


def median(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def median_of_pairs(runs: list[tuple[float, int]]) -> tuple[float, int]:
    return statistics.median(r for r, _ in runs), min(k for _, k in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    args = ap.parse_args()
    n, repeats, lat_s = (20_000, 3, 3.0) if args.quick else (100_000, 5, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        p = broker.port
        try:
            print(f"messages per run: {n}, repeats: {repeats} (medians), broker port {p}")
            ceil0, got0 = median_of_pairs([run_mosquitto_pub(p, n, 0) for _ in range(repeats)])
            paho0 = median(lambda: run_paho_loop_start(p, n, 0), repeats)
            link0 = median(lambda: run_link(p, n, 0), repeats)
            samples = median(lambda: run_samples_path(p, n, work), repeats)
            ceil1, got1 = median_of_pairs([run_mosquitto_pub(p, n, 1) for _ in range(repeats)])
            paho1 = median(lambda: run_paho_loop_start(p, n, 1), repeats)
            link1 = median(lambda: run_link(p, n, 1), repeats)
            events = median(lambda: run_events_path(p, n, work), repeats)
            p50, p99 = run_latency(p, 1000, lat_s, work)
        finally:
            broker.stop()

    def lost(got: int) -> str:
        return "" if got >= n else f" [{got:,} of {n:,} arrived]"

    rows = [
        (f"QoS 0  mosquitto_pub -l (C client){lost(got0)}", ceil0, ceil0 / paho0),
        ("QoS 0  bare paho, loop_start thread", paho0, 1.0),
        ("QoS 0  cellctl link, paho on the asyncio loop", link0, link0 / paho0),
        ("QoS 0  cellctl samples path (bus→policy→JSON→link)", samples, samples / paho0),
        (f"QoS 1  mosquitto_pub -l (C client){lost(got1)}", ceil1, ceil1 / paho1),
        ("QoS 1  bare paho, loop_start thread", paho1, 1.0),
        ("QoS 1  cellctl link, paho on the asyncio loop", link1, link1 / paho1),
        ("QoS 1  cellctl events path (spool, group commit)", events, events / paho1),
    ]
    print(f"{'path':<66}{'msg/s':>10}{'× paho':>9}")
    for name, rate, ratio in rows:
        print(f"{name:<66}{rate:>10,.0f}{ratio:>9.2f}")
    print(f"latency driver event → subscriber at 1,000 events/s (QoS 1, spooled, {lat_s:.0f} s):")
    print(f"  p50 {p50:.2f} ms   p99 {p99:.2f} ms")
    print(
        "targets: samples ≥ 0.90 × paho QoS 0: "
        + ("met" if samples / paho0 >= 0.9 else "MISSED")
        + "; events ≥ 0.50 × paho QoS 1: "
        + ("met" if events / paho1 >= 0.5 else "MISSED")
        + "; p99 < 10 ms: "
        + ("met" if p99 < 10 else "MISSED")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
