"""Which HTTP library for `cellctl panel`: aiohttp against Starlette on uvicorn.

Each candidate runs in its own subprocess serving what the panel serves: a small JSON
`GET /api/version`, and `POST /api/files/local` whose multipart file is streamed into
a SHA-256 (aiohttp: `request.multipart()` read in chunks; Starlette: `request.form()`,
which spools the file to a temporary file, then read in chunks). The same client
(http.client, in this process) measures, per candidate:

- start: spawn → listening (imports included), and RSS once listening;
- GET /api/version requests/s on one keep-alive connection;
- a 50 MiB upload: seconds, and the server's peak RSS (VmHWM) after it.

Medians over repetitions; ratios against aiohttp, measured in the same run.

    python benchmarks/panel_http.py            # 3 repetitions
    python benchmarks/panel_http.py --quick    # 1 repetition

Starlette, uvicorn and python-multipart are not dependencies of cellctl: install them
to include that candidate (it is skipped, and says so, otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
BOUNDARY = "benchboundary7f3a"


# --- servers (run with --serve NAME) ---------------------------------------------


def serve_aiohttp() -> None:
    from aiohttp import web

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"api": "0.1", "server": "x", "text": "OctoPrint (bench)"})

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        digest, size = hashlib.sha256(), 0
        while (part := await reader.next()) is not None:
            if part.name != "file":
                continue
            while chunk := await part.read_chunk(1 << 16):  # type: ignore[union-attr]
                digest.update(chunk)
                size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size}, status=201)

    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/files/local", upload)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    import asyncio

    asyncio.run(main())


def serve_starlette() -> None:
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def version(request: Request) -> JSONResponse:
        return JSONResponse({"api": "0.1", "server": "x", "text": "OctoPrint (bench)"})

    async def upload(request: Request) -> JSONResponse:
        digest, size = hashlib.sha256(), 0
        async with request.form(max_part_size=1 << 30) as form:
            f = form["file"]
            while chunk := await f.read(1 << 16):  # type: ignore[union-attr]
                digest.update(chunk)
                size += len(chunk)
        return JSONResponse({"sha256": digest.hexdigest(), "size": size}, status_code=201)

    app = Starlette(
        routes=[Route("/api/version", version), Route("/api/files/local", upload, methods=["POST"])]
    )
    with socket.socket() as probe:  # a free port; uvicorn binds it itself (its socket options)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    print(port, flush=True)
    config = uvicorn.Config(app, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()


SERVERS = {"aiohttp": serve_aiohttp, "starlette+uvicorn": serve_starlette}
NEEDS = {"aiohttp": ["aiohttp"], "starlette+uvicorn": ["starlette", "uvicorn", "multipart"]}


# --- the client ------------------------------------------------------------------


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def body(size: int) -> tuple[Iterator[bytes], int]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="print"\r\n\r\nfalse\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.gcode"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = b"G1 X10.000 Y10.000 E0.0123 F1800\n" * (MIB // 34)

    def gen() -> Iterator[bytes]:
        yield head
        left = size
        while left:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece
        yield tail

    return gen(), len(head) + size + len(tail)


def run_one(name: str, gets: int, upload_mib: int) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 30
        while True:  # uvicorn listens a moment after the socket is bound
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("GET", "/api/version")  # listening, and answering
                json.loads(conn.getresponse().read())
                break
            except ConnectionRefusedError:
                conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        start_s = time.perf_counter() - t0
        idle = kib(proc.pid, "VmRSS")
        t = time.perf_counter()
        for _ in range(gets):
            conn.request("GET", "/api/version")
            conn.getresponse().read()
        rps = gets / (time.perf_counter() - t)
        chunks, length = body(upload_mib * MIB)
        headers = {
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(length),
        }
        t = time.perf_counter()
        conn.request("POST", "/api/files/local", body=chunks, headers=headers)
        answer = json.loads(conn.getresponse().read())
        upload_s = time.perf_counter() - t
        assert answer["size"] == upload_mib * MIB, answer
        peak = kib(proc.pid, "VmHWM")
        conn.close()
        return {
            "start_s": start_s,
            "idle_mib": idle / 1024,
            "get_rps": rps,
            "upload_s": upload_s,
            "peak_mib": peak / 1024,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--serve", choices=sorted(SERVERS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.serve:
        SERVERS[args.serve]()
        return 0
    reps = 1 if args.quick else 3
    names = [n for n in SERVERS if all(importlib.util.find_spec(m) for m in NEEDS[n])]
    for n in sorted(set(SERVERS) - set(names)):
        print(f"{n}: skipped, not installed ({', '.join(NEEDS[n])})")
    results: dict[str, dict[str, float]] = {}
    for name in names:
        runs = [run_one(name, 2000, 50) for _ in range(reps)]
        results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = results.get("aiohttp")
    print(f"medians of {reps} run(s), python {sys.version.split()[0]}, pid {os.getpid()}")
    print(f"{'server':<20}{'start s':>9}{'idle MiB':>10}{'GET/s':>9}{'50 MiB up s':>13}"
          f"{'peak MiB':>10}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:<20}{r['start_s']:>9.2f}{r['idle_mib']:>10.1f}{r['get_rps']:>9.0f}"
              f"{r['upload_s']:>13.2f}{r['peak_mib']:>10.1f}")  # fmt: skip
        if base is not None and name != "aiohttp":
            ratios = ", ".join(f"{k} ×{r[k] / base[k]:.2f}" for k in r)
            print(f"{'':<20}vs aiohttp: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
