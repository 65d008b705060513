"""The Mosquitto password file and ACL exactly as docs/mqtt.md documents them."""

from __future__ import annotations

import re
from pathlib import Path

from mqtt_broker import Mosquitto, password_file

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def documented_acl(cell_user: str, cell: str, prefix: str = "cellctl/v2") -> str:
    """The ACL block of docs/mqtt.md (the one after "## Who may command the cell"),
    with its example cell (user and name `cell-7`) replaced: the tests run what the docs say."""
    text = DOCS.read_text()
    section = text[text.index("## Who may command the cell") :]
    block = re.search(r"```\n(# /etc/mosquitto/acl.*?)```", section, re.S)
    assert block is not None, "docs/mqtt.md lost its ACL block"
    acl = block.group(1).replace("user cell-7", f"user {cell_user}")
    return acl.replace("/cell-7/", f"/{cell}/").replace("cellctl/v2", prefix)


def secured_broker(workdir: Path, cell_user: str, cell: str, users: dict[str, str]) -> Mosquitto:
    """A broker with a password file for `users` (the cell's user among them), the
    documented ACL, and no anonymous clients. Started; the caller stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    pw = password_file(workdir, users)
    acl = workdir / "acl"
    acl.write_text(documented_acl(cell_user, cell))
    broker = Mosquitto(
        workdir / "broker", anonymous=False, extra=f"password_file {pw}\nacl_file {acl}\n"
    )
    broker.start()
    return broker
