"""The daemon's second MQTT connection: urgent commands only.

The broker delivers a client's messages in order on its one socket. Under a
flood of large submits it has megabytes queued for the daemon's main
connection, and an emergency stop published behind them waited until all
of them were read (1.8 s in benchmarks/command_load.py, issue 23). This
connection subscribes only `cmd/+/<name>` for the urgent commands
(cellctl.command_twins.URGENT_COMMANDS), so nothing large is ever queued
ahead of them. It uses the `[mqtt]` broker, user, password and TLS, and its
own client id, `<the main client id>-urgent`; it has no will and publishes
only the replies to what it delivered (falling back to the main connection
while it is down). The broker's ACL needs nothing new: the cell's user reads
`cmd/#` already.

Both connections deliver each urgent command; `Twins` hands the first copy
to the command handler and drops the other, so access control, audit and the
one reply are exactly those of the main path. While the urgent connection is
down, the main one's copy is handled as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from cellctl.command_twins import URGENT_COMMANDS, Channel, Twins, fingerprint
from cellctl.telemetry.encoding import Outgoing
from cellctl.telemetry.link import Incoming, LinkSettings, MqttLink
from cellctl.telemetry.topics import Topics

URGENT_SUFFIX = "-urgent"


def urgent_settings(main: LinkSettings) -> LinkSettings:
    return dataclasses.replace(main, client_id=main.client_id + URGENT_SUFFIX)


class CommandIntake:
    """Where both connections' command messages meet: twins of urgent ones paired and
    one of them dropped, everything else passed straight on."""

    def __init__(
        self,
        topics: Topics,
        handle: Callable[[Incoming], None],
        twins: Twins | None = None,
    ) -> None:
        self.topics = topics
        self.handle = handle
        self.twins = twins or Twins()

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topics.command("+", name), 1) for name in URGENT_COMMANDS]

    def on_message(self, channel: Channel) -> Callable[[Incoming], None]:
        def taken(msg: Incoming) -> None:
            route = self.topics.parse_command(msg.topic)
            if route is not None and not route.legacy and route.name in URGENT_COMMANDS:
                key = fingerprint(
                    msg.topic,
                    msg.payload,
                    msg.correlation,
                    msg.response_topic,
                    msg.user_properties,
                )
                if not self.twins.arrived(channel, key, asyncio.get_running_loop().time()):
                    return
            if channel is Channel.URGENT:
                msg = dataclasses.replace(msg, channel=Channel.URGENT.value)
            self.handle(msg)

        return taken


def urgent_link(settings: LinkSettings, intake: CommandIntake) -> MqttLink:
    link = MqttLink(urgent_settings(settings), subscriptions=intake.subscriptions())
    link.on_message = intake.on_message(Channel.URGENT)
    link.on_subscribed = lambda: intake.twins.subscribed(Channel.URGENT)
    link.on_disconnected = lambda: intake.twins.disconnected(Channel.URGENT)
    return link


# The main connection is not read for longer than this at a time for an urgent command
# (a device that takes its full timeout must not make the broker's keepalive lapse).
PAUSE_MAX_S = 0.5


class MainPause:
    """While an estop, stop or pause is in hand, the main connection is not read: each
    turn of the event loop then goes to the devices' stops, not to 256 KiB of a flood
    queued behind them (the broker and the socket hold it meanwhile)."""

    def __init__(self, main: MqttLink, max_s: float = PAUSE_MAX_S) -> None:
        self.main = main
        self.max_s = max_s
        self._timer: asyncio.TimerHandle | None = None
        self.pauses = 0

    def __call__(self, urgent: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if urgent:
            self.pauses += 1
            self.main.pause_reading(True)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_s, self.main.pause_reading, False)
        else:
            self.main.pause_reading(False)


def reply_on(
    main: MqttLink, urgent: MqttLink | None
) -> Callable[[Outgoing, bytes | None, str], None]:
    """Replies go back on the connection their command came in on, while it is up."""

    def reply(out: Outgoing, correlation: bytes | None, channel: str) -> None:
        if urgent is not None and channel == Channel.URGENT.value:
            if urgent.publish(out, urgent.reply_properties(correlation)) is not None:
                return
        main.publish(out, main.reply_properties(correlation))

    return reply
