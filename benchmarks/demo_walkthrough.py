"""The README's demo walkthrough, run for real and recorded.

configs/demo.toml (every device simulated, the live planner on, its embedded
broker on a free port, a fresh state directory) runs as `cellctl run`; the job
mix of configs/demo-jobs/ is dropped into its hot folder (programs first, job
files last); a scripted operator answers every changeover request `--delay`
seconds after it was asked (withdrawn ones are not answered), by the same MQTT
`answer … setup{}` that `cellctl changeover` sends. Once the whole mix is read
it records `cellctl status` (with the operator's worklist) and `cellctl plan`
(the table, the Gantt chart as SVG, and `--export`); when every job has ended,
`cellctl report` and `cellctl check` (configured vs learned durations).

    python benchmarks/demo_walkthrough.py [--delay 8] [--out DIR]

Everything the CLI printed goes to DIR (default: a temporary directory) and to
stdout; the SVG to DIR/demo-plan.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cellctl.cli.mqtt import Remote, Target
from cellctl.errors import CellError
from cellctl.telemetry.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"
JOBS = ROOT / "configs" / "demo-jobs"
BOUND_S = 900.0  # the whole mix, at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cellctl(out: Path, name: str, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cellctl", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    text = f"$ cellctl {' '.join(argv)}\n{done.stdout}{done.stderr}"
    (out / f"{name}.txt").write_text(text)
    print(text, flush=True)
    return done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=8.0, help="the operator's seconds per change")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="demo-walk-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="demo-cell-"))
    port = free_port()
    text = re.sub(r"(?m)^port = 1883$", f"port = {port}", DEMO.read_text())
    cfg = work / "demo.toml"
    cfg.write_text(text)
    hot = work / "state" / "hotfolder"
    log = (out / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", "-c", str(cfg)], stdout=log, stderr=log
    )
    topics = Topics("demo")
    t0 = time.monotonic()
    try:
        remote = None
        while remote is None:
            try:
                remote = Remote.connect(Target("127.0.0.1", port, topics, False), 5.0)
            except CellError:
                if time.monotonic() - t0 > 60:
                    raise
                time.sleep(0.5)
        # Commands on their own connection: `command` reads its inbox for the reply.
        commander = Remote.connect(Target("127.0.0.1", port, topics, False), 10.0)
        remote.subscribe(f"{topics.base}/status")
        remote.subscribe(f"{topics.base}/devices/+/requests")
        remote.subscribe(f"{topics.base}/jobs/+/events")
        remote.subscribe(topics.plan)

        def until_online() -> None:
            while True:
                m = remote.inbox.get(timeout=60)
                if m.topic.endswith("/status") and json.loads(m.payload).get("state") == "online":
                    return

        until_online()
        started = time.time()
        print(f"cell online after {time.monotonic() - t0:.1f} s; dropping the mix", flush=True)
        while not hot.is_dir():
            time.sleep(0.2)
        shutil.copytree(JOBS / "parts", hot / "parts")
        wanted = set()
        for job in sorted(JOBS.glob("*.toml")):
            shutil.copy(job, hot / job.name)  # copy: the file's time is now (its due counts)
            wanted.add(job.stem)
        ended: dict[str, str] = {}
        accepted: set[str] = set()
        pending: dict[str, tuple[float, dict[str, str]]] = {}  # device → (answer at, load)
        answered = 0
        recorded = False
        mix_in_at: float | None = None
        while ended.keys() != wanted:
            if time.monotonic() - t0 > BOUND_S:
                raise TimeoutError(f"not done: {sorted(wanted - ended.keys())}")
            # Everything that arrived first (a withdrawal must cancel its answer), then
            # the answers that are due.
            try:
                msgs = [remote.inbox.get(timeout=0.2)]
                while True:
                    msgs.append(remote.inbox.get_nowait())
            except queue.Empty:
                pass
            for m in msgs:
                body: Any = json.loads(m.payload)
                if m.topic.endswith("/requests") and body.get("kind") == "changeover":
                    d = body["details"]
                    if d.get("withdrawn"):
                        pending.pop(body["device"], None)
                    elif body["device"] not in pending:
                        pending[body["device"]] = (time.monotonic() + args.delay, dict(d["load"]))
                elif m.topic.endswith("/events") and body.get("event") == "job":
                    job_id = m.topic.split("/")[-2]
                    accepted.add(job_id)
                    if body["state"] in ("done", "failed", "cancelled"):
                        ended[job_id] = body["state"]
                        print(f"{job_id}: {body['state']} ({len(ended)}/{len(wanted)})", flush=True)
                    if mix_in_at is None and wanted <= accepted:
                        mix_in_at = time.monotonic()
            now = time.monotonic()
            for dev, (at, load) in list(pending.items()):
                if at <= now:
                    del pending[dev]
                    r = commander.command(
                        "answer", {"device": dev, "kind": "changeover", "setup": load}
                    )
                    answered += 1
                    print(f"operator: {dev} changed over to {load}: {r['outcome']}", flush=True)
            if not recorded and mix_in_at is not None and now - mix_in_at > 3:
                recorded = True
                c = str(cfg)
                cellctl(out, "status", "status", "-c", c)
                cellctl(
                    out,
                    "plan",
                    "plan",
                    "-c",
                    c,
                    "--svg",
                    str(out / "demo-plan.svg"),
                    "--export",
                    str(out / "demo-problem.json"),
                )
        took = time.time() - started
        print(f"every job ended after {took:.0f} s; {answered} changeovers answered", flush=True)
        (out / "outcome.json").write_text(
            json.dumps({"seconds": took, "answered": answered, "ended": ended}, indent=1)
        )
        remote.close()
        commander.close()
        c = str(cfg)
        since = f"{int(took // 60) + 1}m"
        cellctl(out, "report", "report", "-c", c, "--since", since)
        cellctl(out, "report-json", "report", "-c", c, "--since", since, "--json")
        cellctl(out, "check", "check", "-c", c)
        return 0 if set(ended.values()) == {"done"} else 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        print(f"outputs in {out}; the cell's state in {work}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
