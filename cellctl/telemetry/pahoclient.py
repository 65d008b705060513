"""paho's Client with the two costs the samples path cannot afford, measured away.

paho writes each queued packet with its own `send()` and, once any `on_publish`
callback is set, builds a ReasonCode and a Properties object for every QoS 0
message it writes. On the asyncio loop that is the samples path's largest cost
(benchmarks/telemetry.py: about a third of the time per message). This client

- collects the bytes paho writes during one `loop_write()` and sends them with
  one `send()` (what paho cannot take now stays buffered, and `want_write()`
  keeps the loop's writer registered until it is gone);
- reports acknowledgements of QoS 1/2 messages through `on_acked` instead of
  `on_publish`, so QoS 0 writes build nothing.

Both hooks override paho internals (`_sock_send`, `_sock_close`,
`_do_on_publish`), so the paho version is pinned in pyproject.toml and
tests/mqtt/test_pahoclient.py checks them against the installed paho.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

AckCallback = Callable[[int, bool], None]


class BufferedClient(paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_acked: AckCallback | None = None
        self._wbuf = bytearray()
        self._buffering = False

    def loop_write(self) -> MQTTErrorCode:
        self._buffering = True
        try:
            rc = super().loop_write()
        finally:
            self._buffering = False
        self.flush()
        if not self.want_write():
            self._call_socket_unregister_write()
        return rc

    def want_write(self) -> bool:
        return bool(self._wbuf) or super().want_write()

    def flush(self) -> bool:
        """Send what is buffered; True when the buffer is empty afterwards."""
        sock = self._sock
        while self._wbuf and sock is not None:
            try:
                sent = sock.send(self._wbuf)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            except OSError:
                # A dead connection: the read side notices and ends the session; what
                # was buffered is lost with it (QoS 1 is resent from the spool).
                self._wbuf.clear()
                return True
            del self._wbuf[:sent]
        return not self._wbuf

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if not self._buffering or self._sock is None:
            return super()._sock_send(buf)
        self._wbuf += buf
        return len(buf)

    def _sock_close(self) -> None:
        # paho closes right after "writing" DISCONNECT: let it leave first.
        self.flush()
        self._wbuf.clear()
        super()._sock_close()

    def _do_on_publish(self, mid: int, reason_code: Any, properties: Any) -> MQTTErrorCode:
        handler = self.on_acked
        if handler is not None:
            handler(mid, not reason_code.is_failure)
        return super()._do_on_publish(mid, reason_code, properties)
