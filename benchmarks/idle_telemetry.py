"""What report by exception saves: the idle demo cell's MQTT traffic, with and without.

    python benchmarks/idle_telemetry.py [--window 30] [--repeats 3]

Runs the demo cell (configs/demo.toml, every device simulated, nothing to do)
against a local Mosquitto, once with `report_by_exception = false` (every
sample read goes out: the behaviour before it was the default) and once with
the defaults, alternately, `--repeats` times each. After every device has
connected and a settling time, a subscriber of `cellctl/v2/demo/#` counts
messages and payload bytes for `--window` seconds. Prints medians and the
ratio. The machine is shared: the figures are for the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).parent))
from telemetry import Broker

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.logs import configure as configure_logs

DEMO = Path(__file__).parents[1] / "configs" / "demo.toml"
SETTLE_S = 5.0


class Tally:
    def __init__(self, port: int, topic: str) -> None:
        self.lock = threading.Lock()
        self.counting = False
        self.messages = 0
        self.bytes = 0
        self.by_kind: dict[str, int] = {}
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            if not self.counting or msg.retain:
                return
            self.messages += 1
            self.bytes += len(msg.payload)
            kind = msg.topic.rsplit("/", 1)[1]
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            self.by_kind[kind + " bytes"] = self.by_kind.get(kind + " bytes", 0) + len(msg.payload)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def one_run(
    work: Path, port: int, rbe: bool, window: float
) -> tuple[float, float, dict[str, int]]:
    text = DEMO.read_text()
    text = re.sub(r"(?ms)^\[mqtt\].*\Z", f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n', text)
    text = text.replace('level = "info"', 'level = "warning"', 1)
    text += f"\n[telemetry]\nreport_by_exception = {'true' if rbe else 'false'}\n"
    state = work / ("rbe" if rbe else "all")
    text = text.replace("[cell]\n", f'[cell]\nstate_dir = "{state}"\n', 1)
    path = work / "demo.toml"
    path.write_text(text)
    cell = config_mod.load(path)
    tally = Tally(port, f"cellctl/v2/{cell.name}/#")
    app = App(cell)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            async with asyncio.timeout(60):
                await app.supervisor.started.wait()
                for runner in app.supervisor.runners.values():
                    await runner.connected.wait()
            await asyncio.sleep(SETTLE_S)
            with tally.lock:
                tally.counting = True
            await asyncio.sleep(window)
            with tally.lock:
                tally.counting = False
                result = (tally.messages / window, tally.bytes / window, dict(tally.by_kind))
            app.request_stop()
            async with asyncio.timeout(30):
                await task
    finally:
        tally.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=30.0, help="seconds counted per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    configure_logs("warning", "console")
    runs: dict[bool, list[tuple[float, float, dict[str, int]]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        try:
            for _ in range(args.repeats):
                for rbe in (False, True):
                    runs[rbe].append(asyncio.run(one_run(work, broker.port, rbe, args.window)))
        finally:
            broker.stop()
    print(f"idle demo cell, {args.window:g} s counted per run, {args.repeats} runs (medians)")
    med: dict[bool, tuple[float, float]] = {}
    for rbe, label in ((False, "every sample (report_by_exception = false)"), (True, "defaults")):
        msgs = statistics.median(r[0] for r in runs[rbe])
        size = statistics.median(r[1] for r in runs[rbe])
        med[rbe] = (msgs, size)
        kinds: dict[str, int] = {}
        for r in runs[rbe]:
            for k, n in r[2].items():
                kinds[k] = kinds.get(k, 0) + n
        per_kind = ", ".join(
            f"{k} {n / len(runs[rbe]) / args.window:.2f}/s"
            if not k.endswith(" bytes")
            else f"{n / len(runs[rbe]) / args.window / 1000:.2f} kB/s"
            for k, n in sorted(kinds.items())
        )
        print(f"  {label:45s} {msgs:8.2f} msg/s {size / 1000:8.2f} kB/s   ({per_kind})")
    (m0, b0), (m1, b1) = med[False], med[True]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "all (none sent with it)"

    print(
        f"  report by exception: {ratio(m0, m1)} fewer messages, {ratio(b0, b1)} fewer bytes;"
        f" {b1 * 86400 / 1e6:.1f} MB/day instead of {b0 * 86400 / 1e6:.0f} MB/day"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
