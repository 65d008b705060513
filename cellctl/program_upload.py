"""The client side of `put_program`: a program sent in chunks, resumed until complete.

Used by `cellctl submit` for programs too large for one command message; any
client can do the same (docs/mqtt.md, "Large programs"). `send(name, body)`
sends one command and returns its reply (cellctl.cli.mqtt.Remote.command).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from cellctl.errors import CellError

CHUNK = 1 << 20  # raw bytes a chunk carries: 1.4 MB of base64, under the 4 MiB payload cap
ROUNDS = 5  # passes over what the cell says is missing before giving up
RATE_RETRIES = 20
BUSY_WAIT_S = 0.5
Send = Callable[[str, dict[str, Any]], Mapping[str, Any]]


class UploadFailed(CellError):
    """The cell refused the upload; the message says why."""


def upload(
    send: Send,
    data: bytes,
    name: str | None = None,
    chunk: int = CHUNK,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Upload `data`; returns `sha256:<hex>`, the name a submit step gives as `file`."""
    sha = hashlib.sha256(data).hexdigest()
    size = len(data)

    def put(offset: int) -> Mapping[str, Any]:
        body: dict[str, Any] = {
            "sha256": sha,
            "size": size,
            "offset": offset,
            "data": base64.b64encode(data[offset : offset + chunk]).decode("ascii"),
        }
        if name:
            body["name"] = name[:256]
        for _ in range(RATE_RETRIES):
            reply = send("put_program", body)
            if reply.get("outcome") == "accepted":
                result = reply.get("result")
                if not isinstance(result, Mapping):
                    raise UploadFailed("put_program: a reply without a result")
                return result
            reason = str(reply.get("reason") or "no reason given")
            wait = re.search(r"retry in ([0-9.]+) s", reason)
            if reason.startswith("rate limit") and wait:
                sleep(float(wait.group(1)) + 0.05)
            elif reason.startswith("busy: the"):  # a lane full for now
                sleep(BUSY_WAIT_S)
            else:
                raise UploadFailed(f"put_program: {reason}")
        raise UploadFailed("put_program: still refused for the rate after many retries")

    # The first chunk alone answers `complete` when the cell has the program already.
    result = put(0)
    for offset in range(chunk, size, chunk):
        if result.get("complete"):
            break
        result = put(offset)
    for _ in range(ROUNDS):
        if result.get("complete"):
            return f"sha256:{sha}"
        gaps = result.get("missing") or [[0, size]]
        for start, end in gaps:
            for offset in range(start, end, chunk):
                result = put(offset)
    if result.get("complete"):
        return f"sha256:{sha}"
    raise UploadFailed(f"put_program: still incomplete after {ROUNDS} rounds: {result}")
