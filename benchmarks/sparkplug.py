"""Sparkplug B against the JSON namespace, in one run: wire traffic and encode CPU.

    python benchmarks/sparkplug.py [--quick]

1. Wire: the demo cell (configs/demo.toml, every device simulated) runs as `cellctl run`
   with `[mqtt.sparkplug]` on a local Mosquitto for a while; one subscriber counts the
   messages and bytes (topic + payload, the part that grows with content; MQTT's
   fixed header adds 4–7 bytes a message) of each namespace: `cellctl/v2/#` (JSON)
   and `spBv1.0/#` (Sparkplug). Both see the same samples through the same
   `[telemetry]` policy; Sparkplug sends a metric only when its value changed.
2. Encode CPU per sample: the same sample batches (4 devices × 12 metrics, values
   changing every batch, 6 samples a batch) through `JsonEncoding.samples` and
   through the edge node's `update` + `data` (change detection, aliases, protobuf).
   Process CPU time per sample, median over the repeats; ratio Sparkplug / JSON.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from telemetry import Broker

from cellctl.model import Sample
from cellctl.telemetry.encoding import JsonEncoding
from cellctl.telemetry.sparkplug.catalog import MetricDef
from cellctl.telemetry.sparkplug.payload import DataType
from cellctl.telemetry.sparkplug.session import Change, EdgeNode
from cellctl.telemetry.topics import Topics

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


class Counter:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.counts = {"json": [0, 0], "sparkplug": [0, 0]}
        self.c = paho.Client(CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, *a: c.subscribe([("cellctl/v2/#", 0), ("spBv1.0/#", 0)])
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: object, u: object, msg: paho.MQTTMessage) -> None:
        key = "sparkplug" if msg.topic.startswith("spBv1.0/") else "json"
        with self.lock:
            self.counts[key][0] += 1
            self.counts[key][1] += len(msg.topic.encode()) + len(msg.payload)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            return {k: (v[0], v[1]) for k, v in self.counts.items()}

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def part_program(moves: int) -> str:
    """A print that heats and moves: temperatures and positions change all along."""
    lines = ["M140 S60", "M104 S200", "G28", "M190 S60", "M109 S200", "G90"]
    for i in range(moves):
        x, y = 20 + (i * 7) % 160, 20 + (i * 13) % 160
        lines.append(f"G1 X{x} Y{y} Z{0.2 + i // 100 * 0.2:.1f} E{i * 0.05:.2f} F3000")
    return "\n".join([*lines, "M104 S0", "M140 S0", ""])


def wire(work: Path, seconds: float, printing: bool) -> dict[str, tuple[float, float]]:
    broker = Broker(work)
    counter = Counter(broker.port)
    cfg = work / "demo.toml"
    text = DEMO.read_text().replace("port = 1883", f"port = {broker.port}")
    text = text.replace("embedded = true", "embedded = false")
    text = text.replace("[cell]\n", f'[cell]\nstate_dir = "{work / "state"}"\n', 1)
    cfg.write_text(text + '\n[mqtt.sparkplug]\ngroup_id = "plant"\n')
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        time.sleep(min(10.0, seconds / 2))  # start-up: births and first values, not counted
        if printing:
            drop = work / "state" / "hotfolder"
            drop.mkdir(parents=True, exist_ok=True)
            (drop / "part.gcode").write_text(part_program(3000))
            time.sleep(3.0)  # the hot folder's settle time and the job's start
        before, t0 = counter.snapshot(), time.monotonic()
        time.sleep(seconds)
        after, t1 = counter.snapshot(), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(20)
        counter.stop()
        broker.stop()
        log.close()
    dt = t1 - t0
    return {
        k: ((after[k][0] - before[k][0]) / dt, (after[k][1] - before[k][1]) / dt) for k in after
    }


def batches(n: int) -> list[tuple[str, list[Sample]]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        dev = f"dev{i % 4}"
        names = rng.sample(range(12), 6)
        out.append(
            (dev, [Sample(f"m{j}", round(rng.uniform(0, 300), 2), time.time()) for j in names])
        )
    return out


def encode_cpu(data: list[tuple[str, list[Sample]]]) -> tuple[float, float]:
    enc = JsonEncoding(Topics("demo"))
    t0 = time.process_time()
    for dev, samples in data:
        enc.samples(dev, samples, 0)
    json_s = time.process_time() - t0

    node = EdgeNode("plant", "demo")
    node.will(0)
    node.nbirth({})
    for d in range(4):
        node.define(f"dev{d}", [MetricDef(f"m{j}", DataType.DOUBLE, "mm") for j in range(12)])
        node.dbirth(f"dev{d}")
    t0 = time.process_time()
    for dev, samples in data:
        changes = [Change(s.name, s.value, int(s.timestamp * 1000), s.quality) for s in samples]
        node.data(dev, node.update(dev, changes))
    spb_s = time.process_time() - t0
    n = sum(len(s) for _, s in data)
    return json_s / n * 1e6, spb_s / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter wire run, fewer repeats")
    args = ap.parse_args()
    seconds, repeats, n = (10.0, 3, 5_000) if args.quick else (30.0, 5, 20_000)
    data = batches(n)
    cpu = [encode_cpu(data) for _ in range(repeats)]
    json_us = statistics.median(c[0] for c in cpu)
    spb_us = statistics.median(c[1] for c in cpu)
    print(f"encode CPU per sample ({n} batches × 6 samples, median of {repeats}):")
    print(f"  JSON      {json_us:7.2f} µs")
    print(f"  Sparkplug {spb_us:7.2f} µs   ratio {spb_us / json_us:.2f}× JSON")
    for printing in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            rates = wire(Path(tmp), seconds, printing)
        (jm, jb), (sm, sb) = rates["json"], rates["sparkplug"]
        what = "printing a part" if printing else "idle"
        print(f"demo cell {what}, {seconds:g} s after start-up, same samples and policy:")
        print(f"  JSON      {jm:8.2f} messages/s {jb:10.0f} bytes/s")
        print(f"  Sparkplug {sm:8.2f} messages/s {sb:10.0f} bytes/s")
        if jm and jb:
            print(f"  ratio     {sm / jm:8.3f}            {sb / jb:10.3f}  (Sparkplug / JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
