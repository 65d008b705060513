"""`[panel]`: where the HTTP front end listens and how it reaches the cell.

Pure pydantic, no aiohttp: cellctl.config parses it with the rest of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellctl.access import USER_PATTERN
from cellctl.driver import Secret
from cellctl.panel.proxy import network

MIB = 1 << 20


class PanelTls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path
    key_file: Path


class PanelSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # 127.0.0.1 by default: put a reverse proxy with TLS in front, or set [panel.tls].
    host: str = "127.0.0.1"
    # 0: any free port (the URL is printed on standard output at start).
    port: int = Field(default=8080, ge=0, le=65535)
    tls: PanelTls | None = None
    # The panel's own broker account (its role in [access.users]: "frontend").
    # CELLCTL_MQTT_USERNAME / CELLCTL_MQTT_PASSWORD override these, as for the CLI.
    mqtt_username: Annotated[str, Field(pattern=USER_PATTERN)] | None = None
    mqtt_password: Secret | None = None
    # API keys (hashed), relative to the config file; default <state_dir>/panel-keys.json.
    api_keys_file: Path | None = None
    # The largest upload taken (413 above it).
    max_upload_mb: float = Field(default=512, gt=0)
    # Up to this size the G-code travels inside the `submit` command; above it, as
    # `put_program` chunks (the cell's payload cap must exceed it, base64 and JSON added).
    inline_max_mb: float = Field(default=2, gt=0)
    chunk_bytes: int = Field(default=MIB, ge=4096, le=16 * MIB)
    # How long one command may wait for the cell's reply.
    command_timeout_s: float = Field(default=30.0, gt=0)
    # The operator page (docs/panel.md, "The operator panel"): sign-in attempts per source
    # address within the window (then 429 until the window lets one more in; no lockout),
    # and how long an idle session lasts.
    signin_attempts: int = Field(default=10, ge=1)
    signin_window_s: float = Field(default=60.0, gt=0)
    session_idle_h: float = Field(default=12.0, gt=0)
    # Where uploads are spooled while they are checked and sent (default: the system's).
    spool_dir: Path | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-Proto and X-Forwarded-For
    # the operator page believes: the Secure cookie and the sign-in rate limit per client.
    # From any other address those headers are ignored (cellctl.panel.proxy).
    trusted_proxies: tuple[str, ...] = ()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def inline_max_bytes(self) -> int:
        return int(self.inline_max_mb * MIB)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            try:
                network(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r}: expected an IP address or network (10.0.0.5, 10.0.0.0/24)"
                ) from None
        return v

    @model_validator(mode="after")
    def _password_needs_user(self) -> PanelSection:
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("mqtt_password goes with mqtt_username")
        return self
