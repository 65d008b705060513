"""Every MQTT topic cellctl uses, built in this one module (documented in docs/mqtt.md).

<prefix>/<cell>/status                         retained  online / offline (and the will)
<prefix>/<cell>/spool                          retained  spool depth and drop counters
<prefix>/<cell>/devices/<device>/state         retained  PackML state, QoS 1, spooled
<prefix>/<cell>/devices/<device>/samples                 metric samples, QoS 0 by default
<prefix>/<cell>/devices/<device>/progress                running step progress, QoS 0
<prefix>/<cell>/devices/<device>/alarms                  alarms, QoS 1, spooled
<prefix>/<cell>/devices/<device>/requests                operator requests, QoS 1, spooled
<prefix>/<cell>/jobs/<job>/events                        job and step transitions, QoS 1, spooled
<prefix>/<cell>/audit                                    every command and its outcome, QoS 1
<prefix>/<cell>/cmd/<command>                            commands to the cell
<prefix>/<cell>/cmd/<command>/reply                      replies on MQTT 3.1.1 (MQTT 5 uses
                                                         the command's response topic)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "cellctl/v1"


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
    def audit(self) -> str:
        return f"{self.base}/audit"

    def device(self, device_id: str, kind: str) -> str:
        return f"{self.base}/devices/{device_id}/{kind}"

    def state(self, device_id: str) -> str:
        return self.device(device_id, "state")

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

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def commands(self) -> str:
        """Subscription filter for every command (replies are filtered out by name)."""
        return f"{self.base}/cmd/+"

    def reply(self, name: str) -> str:
        return f"{self.command(name)}/reply"

    @property
    def everything(self) -> str:
        return f"{self.base}/#"

    def command_name(self, topic: str) -> str | None:
        """`<base>/cmd/<name>` → name; anything else → None."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None
