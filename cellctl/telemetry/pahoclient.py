"""paho's Client with the two costs the samples path cannot afford, measured away.

paho writes each queued packet with its own `send()` and, once any `on_publish`
callback is set, builds a ReasonCode and a Properties object for every QoS 0
message it writes. On the asyncio loop that is the samples path's largest cost
(benchmarks/telemetry.py: about a third of the time per message). This client

- collects the bytes paho writes during one `loop_write()` and sends them with
  one `send()` (what paho cannot take now stays buffered, and `want_write()`
  keeps the loop's writer registered until it is gone);
- reports acknowledgements of QoS 1/2 messages through `on_acked` instead of
  `on_publish`, so QoS 0 writes build nothing;
- writes a QoS 0 PUBLISH straight into that buffer (`publish_qos0`) when
  paho has nothing queued ahead of it: paho's `publish()` builds a message-info
  object with its own lock for every message, which a QoS 0 sample never needs.

The hooks override or read paho internals (`_sock_send`, `_sock_close`,
`_do_on_publish`, `_out_packet`, `_call_socket_(un)register_write`), so the
paho version is pinned in pyproject.toml, and tests/mqtt/test_link_writes.py
checks bursts of both QoS levels on MQTT 5 and 3.1.1 against the installed paho.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

AckCallback = Callable[[int, bool], None]


# MQTT's largest remaining length (four length bytes).
_MAX_REMAINING = 268_435_455


def remaining_length(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


# What one `loop_read()` takes at most: packets, and bytes read from the socket. paho's
# own loop reads as many packets as it has messages in flight (up to a thousand), whole,
# so a burst of large commands held the event loop for half a second (issue 23); what is
# left stays in the socket (or in a half-read packet) for the loop's next turn. 256 KiB:
# 1 MiB turns took 33 ms (median) on a loaded 2-core machine during the command flood,
# each one a delay for an emergency stop's device writes.
READ_PACKETS = 64
READ_BYTES = 256 << 10


class BufferedClient(paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_acked: AckCallback | None = None
        self._wbuf = bytearray()
        self._buffering = False
        self._mqtt5 = self.protocol == MQTTProtocolVersion.MQTTv5
        self._topic_fields: dict[str, bytes] = {}
        self._read_budget = READ_BYTES

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._read_budget = READ_BYTES
        try:
            for _ in range(READ_PACKETS):
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            self._read_budget = READ_BYTES

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho takes BlockingIOError for "nothing more now" and keeps a half-read packet.
        if self._read_budget <= 0:
            raise BlockingIOError
        data: bytes = super()._sock_recv(min(bufsize, self._read_budget))
        self._read_budget -= len(data)
        return data

    def read_pending(self) -> bool:
        """Bytes TLS decrypted already but not handed over: the socket shows no readiness
        for them, so the reader must be called again."""
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def publish_qos0(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Queue a QoS 0 PUBLISH; False when paho must do it (connection or queue state)."""
        if self._sock is None or self._out_packet or not self.is_connected():
            return False
        head = self._topic_fields.get(topic)
        if head is None:
            raw = topic.encode()
            if not raw or len(raw) > 65535 or "+" in topic or "#" in topic:
                return False  # paho raises the right error for these
            # Topic name, then (MQTT 5) an empty property list.
            head = len(raw).to_bytes(2, "big") + raw + (b"\x00" if self._mqtt5 else b"")
            if len(self._topic_fields) < 4096:
                self._topic_fields[topic] = head
        size = len(head) + len(payload)
        if size > _MAX_REMAINING:
            return False
        self._wbuf += b"".join(
            (b"\x31" if retain else b"\x30", remaining_length(size), head, payload)
        )
        self._call_socket_register_write()
        return True

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
