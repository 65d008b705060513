"""OPC UA I/O figures, each against a baseline measured in the same run.

1. Batched reads through the driver vs raw asyncua reading the same nodes one
   by one (values/s, medians of several rounds; target ≥ 8×).
2. Subscription delivery: 1,000 items changing at 10 Hz, delivered ÷ ideal
   (target ≥ 0.99), and ÷ what the server actually produced.
3. Event-loop lag p99 while many writes are issued at once: raw asyncua
   unthrottled vs through the driver's rate limiter.
4. Four simulated Marlin printers streaming G-code in this same event loop,
   alone and with the 1,000-item subscription running in this process (the
   driver's client thread): lines/s lost (target ≤ 2 %), delivery meanwhile,
   loop lag, and CPU per phase: this process, the client thread (and per data
   change), the simulators, the whole machine. As a reference, the same
   subscription in another process: the same CPU on the machine, no shared GIL.
   (Needs the Marlin driver; without it the part is reported as pending.)

The simulated robot runs in its own process (`cellctl sim opcua-robot`), as a
real controller would, so the client's event loop is measured alone.

    python benchmarks/opcua_io.py           # full
    python benchmarks/opcua_io.py --quick   # well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from cellctl_drivers.opcua.driver import OpcUaDriver
from cellctl_drivers.opcua.options import OpcUaOptions
from cellctl_drivers.opcua.quiet import quiet_asyncua
from simproc import sim_process

from cellctl.app import apply_thread_switch
from cellctl.config import SupervisorSection
from cellctl.driver import DriverContext
from cellctl.model import Event, Samples

NS = "urn:cellctl:sim:robot"
# Simulator processes by role, for the CPU accounting of the printers part.
SIM_PIDS: dict[str, list[int]] = {"robot": [], "printers": []}


@contextlib.asynccontextmanager
async def robot_process(items: int, rate_hz: float) -> AsyncIterator[str]:
    settings = {"bulk_tags": items, "bulk_rate_hz": rate_hz, "heartbeat_timeout_s": 0}
    async with sim_process("opcua-robot", settings) as (endpoint, pid):
        if not endpoint.startswith("opc.tcp://"):
            raise SystemExit(f"simulator did not start: {endpoint!r}")
        SIM_PIDS["robot"].append(pid)
        try:
            yield endpoint
        finally:
            SIM_PIDS["robot"].remove(pid)


def bulk_driver(endpoint: str, items: int, read: str, sink: Any) -> OpcUaDriver:
    tags = {
        f"b{i:04d}": {"node": f"s=Bulk.B{i:04d}", "type": "float", "read": read}
        for i in range(items)
    }
    options = OpcUaOptions.model_validate(
        {
            "namespace_uri": NS,
            "tags": tags,
            "publishing_interval_ms": 100.0,
            "sampling_interval_ms": 50.0,
            # A publish that comes late must not overwrite an item's earlier change.
            "queue_size": 10,
            "poll_interval_s": 3600.0,
        }
    )
    return OpcUaDriver(DriverContext("bench", sink, endpoint), options)


async def batched_vs_single(endpoint: str, items: int, rounds: int) -> dict[str, float]:
    driver = bulk_driver(endpoint, items, "poll", lambda e: None)
    names = [f"b{i:04d}" for i in range(items)]
    batched: list[float] = []
    single: list[float] = []
    async with driver, Client(endpoint, timeout=10) as raw:
        idx = await raw.get_namespace_index(NS)
        nodes = [
            raw.get_node(ua.NodeId(ua.String(f"Bulk.B{i:04d}"), ua.Int16(idx)))
            for i in range(items)
        ]
        await driver.read_tags(names)  # warm up both paths
        await nodes[0].read_value()
        for _ in range(rounds):
            t = time.perf_counter()
            samples = await driver.read_tags(names)
            batched.append(len(samples) / (time.perf_counter() - t))
            t = time.perf_counter()
            for node in nodes:
                await node.read_value()
            single.append(items / (time.perf_counter() - t))
    b, s = statistics.median(batched), statistics.median(single)
    return {"batched_per_s": b, "single_per_s": s, "ratio": b / s}


async def subscription_delivery(
    endpoint: str, items: int, rate_hz: float, seconds: float
) -> dict[str, float]:
    per_item: dict[str, set[float]] = {}
    counting = False
    delivered = 0

    def sink(event: Event) -> None:
        nonlocal delivered
        if counting and isinstance(event, Samples):
            for s in event.samples:
                per_item.setdefault(s.name, set()).add(float(s.value))
                delivered += 1

    driver = bulk_driver(endpoint, items, "subscribe", sink)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        await asyncio.sleep(1.0)  # initial values and the first publishes settle
        counting = True
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        counting = False
        elapsed = time.perf_counter() - t0
        serving.cancel()
    distinct = sum(len(v) for v in per_item.values())
    # What the server really produced: each item's values count up by one per change.
    produced = sum(max(v) - min(v) + 1 for v in per_item.values() if v)
    ideal = items * rate_hz * elapsed
    return {
        "delivered": float(delivered),
        "distinct": float(distinct),
        "ideal": ideal,
        "delivered_over_ideal": distinct / ideal,
        "delivered_over_produced": distinct / produced if produced else 0.0,
    }


@contextlib.asynccontextmanager
async def loop_lag(samples: list[float], period: float = 0.005) -> AsyncIterator[None]:
    """Record how late a 5 ms ticker wakes up while the body runs."""

    async def tick() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period)
            samples.append(time.perf_counter() - t - period)

    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else 0.0


async def write_lag(endpoint: str, writes: int) -> dict[str, float]:
    """Many writers at once: raw asyncua unthrottled vs through the driver's limiter."""
    raw_lag: list[float] = []
    drv_lag: list[float] = []
    options = OpcUaOptions.model_validate(
        {
            "namespace_uri": NS,
            "max_writes_per_s": 50.0,
            "tags": {
                "n": {"node": "s=Robot.ProgramNumber", "type": "int", "read": "none"},
            },
        }
    )
    driver = OpcUaDriver(DriverContext("bench", lambda e: None, endpoint), options)
    async with Client(endpoint, timeout=30) as raw:
        idx = await raw.get_namespace_index(NS)
        node = raw.get_node(ua.NodeId(ua.String("Robot.ProgramNumber"), ua.Int16(idx)))
        t = time.perf_counter()
        async with loop_lag(raw_lag):
            await asyncio.gather(
                *[node.write_value(ua.Variant(i, ua.VariantType.Int32)) for i in range(writes)]
            )
        raw_s = time.perf_counter() - t
    async with driver:
        t = time.perf_counter()
        async with loop_lag(drv_lag):
            await asyncio.gather(*[driver.write_tag("n", i) for i in range(writes)])
        drv_s = time.perf_counter() - t
    return {
        "raw_p99_ms": p99(raw_lag) * 1000,
        "driver_p99_ms": p99(drv_lag) * 1000,
        "raw_s": raw_s,
        "driver_s": drv_s,
    }


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds per wall second over one phase: this process, one of its threads
    (the OPC UA client thread), the simulators by role, and the whole machine."""

    def __init__(self, thread_ident: int | None = None) -> None:
        self.clock = time.pthread_getcpuclockid(thread_ident) if thread_ident else None
        self.result: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        busy, total = _machine_jiffies()
        out = {
            "wall": time.perf_counter(),
            "process": time.process_time(),
            "busy": float(busy),
            "total": float(total),
        }
        for role, pids in SIM_PIDS.items():
            out[role] = sum(_proc_cpu(p) for p in pids)
        if self.clock is not None:
            out["client_thread"] = time.clock_gettime(self.clock)
        return out

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        wall = end["wall"] - self._start["wall"]
        for key in end:
            if key not in ("wall", "busy", "total"):
                self.result[key] = (end[key] - self._start[key]) / wall
        total = end["total"] - self._start["total"]
        cores = os.cpu_count() or 1
        self.result["machine"] = cores * (end["busy"] - self._start["busy"]) / total if total else 0


def marlin_available() -> bool:
    try:
        from cellctl.registry import Registry

        Registry().driver("marlin")
    except Exception:
        return False
    return True


@contextlib.asynccontextmanager
async def marlin_processes(n: int) -> AsyncIterator[list[str]]:
    """n simulated printers, each a `cellctl sim marlin` process on its own pty.

    115200 baud with a 1 ms latency timer and a fast parser: the wire is the limit,
    so a host that falls behind shows up as lost lines/s."""
    sets = ["baud=115200", "latency_ms=1", "parse_rate=50000", "buffer_size=8", "planner_size=64"]
    args = [a for kv in sets for a in ("--set", kv)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "cellctl", "sim", "marlin", "--time-factor", "1000000", *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        paths = []
        for p in procs:
            assert p.stdout is not None
            async with asyncio.timeout(60):
                line = (await p.stdout.readline()).decode().strip()
            if not line.startswith("/"):
                raise SystemExit(f"printer simulator did not start: {line!r}")
            paths.append(line)
        SIM_PIDS["printers"] = [p.pid for p in procs]
        yield paths
    finally:
        SIM_PIDS["printers"] = []
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await p.wait()


async def stream_printers(paths: list[str], gcode: Any, lines: int) -> float:
    """Stream the file to every printer at once; aggregate lines/s.

    The clock starts when every printer is connected: a handshake retried on a
    loaded machine costs seconds, and it is not streaming."""
    from cellctl_drivers.marlin.driver import MarlinDriver, MarlinOptions

    from cellctl.errors import LinkError
    from cellctl.model import Program, ProgramKind, Step, StepOutcome

    async def connected(i: int, path: str) -> Any:
        options = MarlinOptions(position_interval_s=0, ok_timeout_s=30)
        for attempt in range(3):
            driver = MarlinDriver(DriverContext(f"printer-{i}", endpoint=path), options)
            try:
                await driver.__aenter__()
                return driver
            except LinkError:  # a handshake timing out on an overloaded machine
                await driver.__aexit__(None, None, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    all_connected = asyncio.Barrier(len(paths))
    started: list[float] = []

    async def one(i: int, path: str) -> None:
        driver = await connected(i, path)
        try:
            if await all_connected.wait() == 0:
                started.append(time.perf_counter())
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(driver.serve())
                step = Step("bench", i, "print", Program(ProgramKind.GCODE, path=gcode))
                result = await driver.run(step, lambda p: None)
                serving.cancel()
        finally:
            await driver.__aexit__(None, None, None)
        if result.outcome != StepOutcome.DONE:
            raise SystemExit(f"printer {i}: stream failed: {result}")

    async with asyncio.TaskGroup() as tg:
        for i, path in enumerate(paths):
            tg.create_task(one(i, path))
    return len(paths) * lines / (time.perf_counter() - started[0])


async def printers_with_and_without(
    endpoint: str, items: int, rate_hz: float, quick: bool
) -> dict[str, float]:
    import tempfile
    from pathlib import Path

    import structlog
    from cellctl_drivers.marlin.samples import write_short_segments

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    lines = 1500 if quick else 5000
    reps = 3 if quick else 5
    alone: list[float] = []
    loaded: list[float] = []
    elsewhere: list[float] = []
    lag_elsewhere: list[float] = []
    delivery: list[float] = []
    lag_alone: list[float] = []
    lag_loaded: list[float] = []
    cpu_alone: list[dict[str, float]] = []
    cpu_loaded: list[dict[str, float]] = []
    per_change: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        gcode = Path(d) / "short.gcode"
        write_short_segments(gcode, lines)
        async with marlin_processes(4) as paths:
            await stream_printers(paths, gcode, min(lines, 300))  # warm up
            for _ in range(reps):
                lag: list[float] = []
                with CpuMeter() as meter:
                    async with loop_lag(lag, 0.01):
                        alone.append(await stream_printers(paths, gcode, lines))
                cpu_alone.append(meter.result)
                lag_alone.append(p99(lag))
                counter = _Counter()
                driver = bulk_driver(endpoint, items, "subscribe", counter)
                async with driver, asyncio.TaskGroup() as tg:
                    serving = tg.create_task(driver.serve())
                    await asyncio.sleep(1.0)
                    lag = []
                    counter.on = True
                    thread = driver.client_thread.thread
                    t0 = time.perf_counter()
                    with CpuMeter(thread.ident if thread else None) as meter:
                        async with loop_lag(lag, 0.01):
                            loaded.append(await stream_printers(paths, gcode, lines))
                    elapsed = time.perf_counter() - t0
                    cpu_loaded.append(meter.result)
                    lag_loaded.append(p99(lag))
                    counter.on = False
                    serving.cancel()
                delivery.append(counter.distinct() / (items * rate_hz * elapsed))
                changes_per_s = counter.distinct() / elapsed
                if changes_per_s:
                    per_change.append(meter.result.get("client_thread", 0.0) / changes_per_s)
                # Reference: the same subscription in another process. Same CPU work on
                # the machine, but no share of this process's GIL.
                async with subscriber_process(endpoint, items):
                    lag = []
                    async with loop_lag(lag, 0.01):
                        elsewhere.append(await stream_printers(paths, gcode, lines))
                    lag_elsewhere.append(p99(lag))
    a, b = statistics.median(alone), statistics.median(loaded)
    med = statistics.median

    def cpu(phases: list[dict[str, float]], key: str) -> float:
        return med([p.get(key, 0.0) for p in phases])

    out = {
        "alone": a,
        "loaded": b,
        "loss": 1 - b / a,
        "elsewhere": med(elsewhere),
        "loss_elsewhere": 1 - med(elsewhere) / a,
        "lag_elsewhere_ms": 1000 * med(lag_elsewhere),
        "delivery": med(delivery),
        "reps": float(reps),
        "lag_alone_ms": 1000 * med(lag_alone),
        "lag_loaded_ms": 1000 * med(lag_loaded),
        "us_per_change": 1e6 * med(per_change) if per_change else 0.0,
    }
    for key in ("process", "client_thread", "robot", "printers", "machine"):
        out[f"cpu_{key}_alone"] = cpu(cpu_alone, key)
        out[f"cpu_{key}_loaded"] = cpu(cpu_loaded, key)
    return out


class _Counter:
    """An event sink counting distinct values per item while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.per_item: dict[str, set[float]] = {}

    def __call__(self, event: Event) -> None:
        if self.on and isinstance(event, Samples):
            for smp in event.samples:
                self.per_item.setdefault(smp.name, set()).add(float(smp.value))

    def distinct(self) -> int:
        return sum(len(v) for v in self.per_item.values())


async def subscriber(endpoint: str, items: int) -> None:
    """`--subscriber`: the same subscription through the driver, in this process only,
    until stdin closes (the reference phase of `printers_with_and_without`)."""
    counter = _Counter()
    driver = bulk_driver(endpoint, items, "subscribe", counter)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with driver, asyncio.TaskGroup() as tg:
        serving = tg.create_task(driver.serve())
        print("subscribed", flush=True)
        async with asyncio.timeout(600):
            await reader.read()  # EOF: the benchmark is done with us
        serving.cancel()


@contextlib.asynccontextmanager
async def subscriber_process(endpoint: str, items: int) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--subscriber",
        endpoint,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        if line.strip() != b"subscribed":
            raise SystemExit(f"subscriber did not start: {line!r}")
        await asyncio.sleep(1.0)
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows")
    parser.add_argument("--subscriber", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--switch-ms",
        type=float,
        default=SupervisorSection().thread_switch_ms,
        help="interpreter-lock switch interval (default: the daemon's, [supervisor])",
    )
    args = parser.parse_args()
    # What the daemon does at start (App.run), so the drivers here run as they would there.
    apply_thread_switch(SupervisorSection(thread_switch_ms=args.switch_ms))
    quiet_asyncua()
    if args.subscriber:
        await subscriber(args.subscriber, 1000)
        return
    items, rate = 1000, 10.0
    rounds = 3 if args.quick else 7
    window = 5.0 if args.quick else 20.0
    print(
        f"opcua_io: {items} items, {'quick' if args.quick else 'full'} run, pid {os.getpid()}, "
        f"thread switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    async with robot_process(items, rate) as endpoint:
        r = await batched_vs_single(endpoint, items, rounds)
        print(
            f"reads: driver batched {r['batched_per_s']:,.0f} values/s (median of {rounds}) vs "
            f"raw asyncua one by one {r['single_per_s']:,.0f} values/s: "
            f"{r['ratio']:.1f}x (target >= 8x)"
        )
        d = await subscription_delivery(endpoint, items, rate, window)
        print(
            f"subscription: {items} items at {rate:g} Hz for {window:g} s: "
            f"{d['distinct']:,.0f} changes delivered of {d['ideal']:,.0f} ideal = "
            f"{d['delivered_over_ideal']:.3f} (target >= 0.99); "
            f"of what the server produced: {d['delivered_over_produced']:.3f}"
        )
        w = await write_lag(endpoint, 200 if args.quick else 500)
        print(
            f"writes: event-loop lag p99 with {200 if args.quick else 500} concurrent writes: "
            f"raw asyncua unthrottled {w['raw_p99_ms']:.1f} ms (done in {w['raw_s']:.2f} s) vs "
            f"driver rate-limited at 50/s {w['driver_p99_ms']:.1f} ms (in {w['driver_s']:.2f} s)"
        )
        if marlin_available():
            p = await printers_with_and_without(endpoint, items, rate, args.quick)
            print(
                f"printers: 4 simulated Marlin printers (115200 baud) streaming: "
                f"{p['alone']:,.0f} lines/s alone vs {p['loaded']:,.0f} lines/s with the "
                f"{items}-item subscription in this process: {100 * p['loss']:.1f} % lost "
                f"(target <= 2 %); subscription delivered/ideal meanwhile {p['delivery']:.3f} "
                f"(medians of {p['reps']:.0f})"
            )
            print(
                f"printers: reference, the same subscription in another process: "
                f"{p['elsewhere']:,.0f} lines/s, {100 * p['loss_elsewhere']:.1f} % lost, "
                f"loop lag p99 {p['lag_elsewhere_ms']:.1f} ms (the CPU cost without the GIL share)"
            )
            print(
                f"printers: loop lag p99 {p['lag_alone_ms']:.1f} ms alone vs "
                f"{p['lag_loaded_ms']:.1f} ms loaded; machine load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            )
            print(
                "printers: CPU s/s alone -> loaded: "
                f"daemon process {p['cpu_process_alone']:.2f} -> {p['cpu_process_loaded']:.2f} "
                f"(of which the OPC UA client thread {p['cpu_client_thread_loaded']:.2f}, "
                f"{p['us_per_change']:.1f} us per data change); "
                f"robot simulator {p['cpu_robot_alone']:.2f} -> {p['cpu_robot_loaded']:.2f}; "
                f"printer simulators {p['cpu_printers_alone']:.2f} -> "
                f"{p['cpu_printers_loaded']:.2f}; whole machine busy "
                f"{p['cpu_machine_alone']:.2f} -> {p['cpu_machine_loaded']:.2f} "
                f"of {os.cpu_count()} cores"
            )
        else:
            print(
                "printers: PENDING: four printers streaming alongside needs the Marlin driver "
                "(not installed)"
            )


if __name__ == "__main__":
    asyncio.run(main())
