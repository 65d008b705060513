"""Every MQTT topic cellctl uses, built in this one module (documented in docs/mqtt.md).

<prefix>/<cell>/status                         retained  online / offline (and the will)
<prefix>/<cell>/spool                          retained  spool depth and drop counters
<prefix>/<cell>/cell                           retained  pending operator requests, held steps
<prefix>/<cell>/devices/<device>/snapshot      retained  the device now: state, step, requests,
                                                         setup, every metric (telemetry/snapshot.py)
<prefix>/<cell>/devices/<device>/state         retained  PackML state, QoS 1, spooled
<prefix>/<cell>/devices/<device>/samples                 metric samples, QoS 0 by default
<prefix>/<cell>/devices/<device>/progress                running step progress, QoS 0
<prefix>/<cell>/devices/<device>/alarms                  alarms, QoS 1, spooled
<prefix>/<cell>/devices/<device>/requests                operator requests, QoS 1, spooled
<prefix>/<cell>/jobs/<job>/events                        job and step transitions, QoS 1, spooled
<prefix>/<cell>/audit                                    every command and its outcome, QoS 1
<prefix>/<cell>/plan                           retained  the live plan and the operator's worklist
<prefix>/<cell>/plan/problem                   retained  the problem that plan answers
<prefix>/<cell>/report                         retained  the shift report since the daemon started
<prefix>/<cell>/cmd/<user>/<command>                     commands; <user> is the broker user
                                                         (its ACL: write only your own)
<prefix>/<cell>/replies/<user>/<command>                 replies (MQTT 5: the response topic,
                                                         which must lie under replies/<user>)
<prefix>/<cell>/cmd/<command>[/reply]                    v1 commands and their 3.1.1 replies,
                                                         only with `legacy_commands = true`
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "cellctl/v2"


@dataclass(frozen=True, slots=True)
class Topics:
    cell: str
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.cell}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def spool(self) -> str:
        return f"{self.base}/spool"

    @property
    def cell_snapshot(self) -> str:
        return f"{self.base}/cell"

    @property
    def audit(self) -> str:
        return f"{self.base}/audit"

    @property
    def plan(self) -> str:
        return f"{self.base}/plan"

    @property
    def plan_problem(self) -> str:
        return f"{self.base}/plan/problem"

    @property
    def report(self) -> str:
        return f"{self.base}/report"

    def device(self, device_id: str, kind: str) -> str:
        return f"{self.base}/devices/{device_id}/{kind}"

    def state(self, device_id: str) -> str:
        return self.device(device_id, "state")

    def snapshot(self, device_id: str) -> str:
        return self.device(device_id, "snapshot")

    def samples(self, device_id: str) -> str:
        return self.device(device_id, "samples")

    def progress(self, device_id: str) -> str:
        return self.device(device_id, "progress")

    def alarms(self, device_id: str) -> str:
        return self.device(device_id, "alarms")

    def requests(self, device_id: str) -> str:
        return self.device(device_id, "requests")

    def job(self, job_id: str) -> str:
        return f"{self.base}/jobs/{job_id}/events"

    @property
    def jobs_summary(self) -> str:
        return f"{self.base}/jobs"

    def command(self, user: str, name: str) -> str:
        return f"{self.base}/cmd/{user}/{name}"

    @property
    def commands(self) -> str:
        """Subscription filter for every command: exactly two levels, never `#`."""
        return f"{self.base}/cmd/+/+"

    def replies(self, user: str) -> str:
        """Where `user`'s replies go; an MQTT 5 response topic must be this or below it."""
        return f"{self.base}/replies/{user}"

    def reply(self, user: str, name: str) -> str:
        """The reply topic when the command named none (MQTT 3.1.1) or a refused one."""
        return f"{self.replies(user)}/{name}"

    def legacy_command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def legacy_commands(self) -> str:
        return f"{self.base}/cmd/+"

    def legacy_reply(self, name: str) -> str:
        return f"{self.legacy_command(name)}/reply"

    @property
    def everything(self) -> str:
        return f"{self.base}/#"

    def parse_command(self, topic: str) -> CommandTopic | None:
        """`<base>/cmd/<user>/<name>` or (legacy) `<base>/cmd/<name>`; anything else → None."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) == 1:
            return CommandTopic(None, parts[0])
        if len(parts) == 2:
            return CommandTopic(parts[0], parts[1])
        return None

    def command_name(self, topic: str) -> str | None:
        parsed = self.parse_command(topic)
        return parsed.name if parsed is not None else None


@dataclass(frozen=True, slots=True)
class CommandTopic:
    """What a command's topic says: who sent it (None on a legacy topic) and what it is."""

    user: str | None
    name: str

    @property
    def legacy(self) -> bool:
        return self.user is None
