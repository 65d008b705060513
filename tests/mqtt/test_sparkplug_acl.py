"""Who may send DCMD is the broker's decision: the ACL of docs/sparkplug.md on Mosquitto."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from mqtt_acl import documented_acl
from mqtt_broker import Mosquitto, password_file
from mqtt_raw import RawClient
from mqtt_rig import load, running_app, sims, write_config
from spb_host import Host, encode_cmd, value

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sparkplug.md"
CELL_USER = "cell-t1"
USERS = {CELL_USER: "cell-pw", "scada": "scada-pw", "mallory": "mallory-pw"}
BOUND = 15.0


def sparkplug_acl(cell_user: str, node: str) -> str:
    text = DOCS.read_text()
    block = re.search(r"```\n(# /etc/mosquitto/acl, Sparkplug part.*?)```", text, re.S)
    assert block is not None, "docs/sparkplug.md lost its ACL block"
    return block.group(1).replace("user cell-7", f"user {cell_user}").replace("/cell-7", f"/{node}")


def publisher(port: int, user: str) -> RawClient:
    return RawClient(port, (user, USERS[user]))


def pause_audits(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
        rows = conn.execute("SELECT outcome, origin FROM command_audit WHERE command = 'pause'")
        return [(o, json.loads(origin)) for o, origin in rows]


async def test_a_dcmd_from_a_user_the_acl_denies_never_reaches_the_cell(tmp_path: Path) -> None:
    work = tmp_path / "broker"
    work.mkdir()
    pw = password_file(work, USERS)
    acl = work / "acl"
    acl.write_text(documented_acl(CELL_USER, "t1") + "\n" + sparkplug_acl(CELL_USER, "t1"))
    broker = Mosquitto(work, anonymous=False, extra=f"password_file {pw}\nacl_file {acl}\n")
    broker.start()
    (tmp_path / "cellpw").write_text("cell-pw\n")
    extra = (
        f'username = "{CELL_USER}"\npassword = {{ file = "{tmp_path / "cellpw"}" }}\n'
        '[mqtt.sparkplug]\ngroup_id = "plant"\nedge_node_id = "t1"\n'
    )
    access = '[access.users]\nsparkplug = ["operator"]\n'
    cell = load(write_config(tmp_path / "cell.toml", broker.port, 1, extra, access=access))
    host = Host(broker.port)
    host.sub.client.username_pw_set("scada", USERS["scada"])
    dcmd = "spBv1.0/plant/DCMD/t1/d1"
    try:
        await host.start()
        async with running_app(cell):
            await host.wait(lambda: len(host.of("DBIRTH", "d1")) == 1, "DBIRTH under the ACL")
            d1 = sims(cell)[0]
            d1.set_state("execute", "go")
            await host.wait(
                lambda: any(
                    value(m) == 6 for d in host.of("DDATA", "d1") for m in d.payload.metrics
                ),
                "d1 executing",
            )
            pause = encode_cmd([("Device Control/Pause", True)])
            async with publisher(broker.port, "mallory") as mallory:
                rc = await mallory.publish(dcmd, pause)
            assert rc.is_failure and rc.value == 0x87, rc  # Not authorized
            async with publisher(broker.port, "scada") as scada:
                rc = await scada.publish(dcmd, pause)
            assert not rc.is_failure
            await host.wait(lambda: any(c == "pause" for c, _ in d1.commands), "scada's pause")
            await host.wait(lambda: len(pause_audits(tmp_path)) >= 1, "the pause audited")
            # Exactly one pause ever reached the cell: scada's, run as the command user.
            audits = pause_audits(tmp_path)
            assert [(o, a["user"]) for o, a in audits] == [("accepted", "sparkplug")]
            assert [c for c, _ in d1.commands] == ["pause"]
    finally:
        host.stop()
        broker.stop()
