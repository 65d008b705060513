"""The `[mqtt.sparkplug]` table: present means the cell also runs as a Sparkplug B edge node."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Sparkplug IDs are MQTT topic levels: no separators or wildcards (3.0, 4.1.1).
SPARKPLUG_ID = r"^[^/#+]+$"


class SparkplugSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = Field(default="cellctl", pattern=SPARKPLUG_ID)
    # The edge node id; "" means the cell's name.
    edge_node_id: str = Field(default="", pattern=r"^[^/#+]*$")
    # A second MQTT client id (one connection has one will); "" → cellctl-<cell>-spb.
    client_id: str = ""
    # Wait for this host application's STATE (online) before births (3.0, 5.4).
    primary_host_id: str | None = Field(default=None, pattern=SPARKPLUG_ID)
    # DCMD/NCMD run as the JSON commands of this cellctl user ([access] decides what it may).
    command_user: str = Field(default="sparkplug", pattern=r"^[A-Za-z0-9_.-]+$")
    # Changes kept while the primary host is offline, sent after the births as historical.
    history_max: int = Field(default=10_000, ge=0)
    # Writable driver tags a DCMD may write, as `<device>/<tag>` patterns (`*` matches);
    # none by default (cellctl/telemetry/sparkplug/writes.py).
    write_tags: tuple[str, ...] = ()
    # How often the node metrics (open jobs, spool depth) are looked at.
    node_poll_s: float = Field(default=1.0, gt=0)
