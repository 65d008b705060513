"""The `opcua` driver's config section: endpoint, security, tag map, program, actions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cellctl.driver import DriverOptions, Secret, StartProblem
from cellctl.model import DeviceState, MetricType, MetricValue


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_NODE = re.compile(r"^(nsu=[^;]+;)?[isgb]=.+$")


def check_node(node: str) -> str:
    if node.startswith("ns="):
        raise ValueError(
            f"node {node!r}: name the namespace by URI (nsu=<uri>;s=…) or leave it out to use "
            "namespace_uri; a namespace index can change when the server restarts"
        )
    if not _NODE.match(node):
        raise ValueError(
            f"node {node!r}: expected an OPC UA node id such as s=Robot.State, i=1001 "
            "or nsu=urn:vendor:robot;s=Robot.State"
        )
    return node


class TagSpec(_Strict):
    """One entry of the tag map. Tags read by subscription or polling become metrics."""

    node: str
    type: MetricType = MetricType.FLOAT
    unit: str = ""
    description: str = ""
    # subscribe: monitored item; poll: batched reads every poll_interval_s;
    # none: a command tag, only written.
    read: Literal["subscribe", "poll", "none"] = "subscribe"
    writable: bool = False

    @model_validator(mode="after")
    def _node_ok(self) -> Self:
        check_node(self.node)
        return self


class ActionSpec(_Strict):
    """A command: a method call (`method` on `object`) or a tag write (`tag` := `value`)."""

    method: str | None = None
    object: str | None = None
    args: tuple[MetricValue, ...] = ()
    tag: str | None = None
    value: MetricValue = True

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.method is None) == (self.tag is None):
            raise ValueError('expected exactly one of method = "<node>" or tag = "<tag name>"')
        if self.method is not None:
            check_node(self.method)
            if self.object is None:
                raise ValueError("a method action needs object = <the node the method belongs to>")
            check_node(self.object)
        return self


class StateSpec(_Strict):
    """Which tag holds the robot's state, and how its values map onto PackML."""

    tag: str
    values: dict[str, DeviceState]
    alarm_tag: str | None = None  # a string tag: non-empty = active alarm text

    @model_validator(mode="before")
    @classmethod
    def _labels(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("values"), dict):
            out = {}
            for key, val in data["values"].items():
                if isinstance(val, str) and val.upper() in DeviceState.__members__:
                    val = DeviceState[val.upper()]
                out[str(key)] = val
            data = {**data, "values": out}
        return data


class ProgramSpec(_Strict):
    """How a job step runs a robot program: a method call or a tag handshake."""

    start: Literal["method", "handshake"] = "handshake"
    # Program names a step may use → program numbers; a step may also give the number.
    programs: dict[str, int] = Field(default_factory=dict)
    # method: call `method` on `object`; "$program" in args is the program number,
    # "$param.<name>" a step parameter. An int first output other than `result_ok` fails.
    method: str | None = None
    object: str | None = None
    args: tuple[MetricValue, ...] = ("$program",)
    result_ok: int = 0
    # handshake: write number_tag, set request_tag, wait for ack_tag, clear request_tag,
    # wait for ack_tag to fall, then wait for done_tag or error_tag.
    number_tag: str | None = None
    request_tag: str | None = None
    ack_tag: str | None = None
    # both: how the end of the program shows
    done_tag: str
    error_tag: str | None = None  # non-zero: the program failed with this code
    run_counter_tag: str | None = None  # counts program starts: proves which run is which
    progress_tag: str | None = None  # 0..1
    ack_timeout_s: float = Field(default=5.0, gt=0)
    clear_timeout_s: float = Field(default=5.0, gt=0)
    done_timeout_s: float = Field(default=600.0, gt=0)
    # A reconnect mid-program: "follow" re-reads the robot and keeps waiting for the
    # same run; "interrupt" ends the step as interrupted. Neither ever starts it again.
    after_reconnect: Literal["follow", "interrupt"] = "follow"

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.start == "method":
            if self.method is None or self.object is None:
                raise ValueError('start = "method" needs method and object')
            check_node(self.method)
            check_node(self.object)
        else:
            missing = [
                k for k in ("number_tag", "request_tag", "ack_tag") if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(f'start = "handshake" needs {", ".join(missing)}')
        return self


class HeartbeatSpec(_Strict):
    tag: str
    interval_s: float = Field(default=1.0, gt=0)


class OpcUaOptions(DriverOptions):
    # opc.tcp://host:port/path; with backend = "sim" the simulator's endpoint is used.
    endpoint: str | None = None
    # The namespace of node ids that do not name one (nsu=…); resolved at connect.
    namespace_uri: str | None = None
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None  # client certificate (PEM or DER)
    private_key: Path | None = None
    # Server certificates (files or directories) accepted; empty: any (logged once).
    trusted_server_certs: tuple[Path, ...] = ()
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = Field(default=4.0, gt=0)  # per request
    # Half-open links are probed this often; each probe may take as long. A closed
    # socket is noticed at once regardless.
    keepalive_s: float = Field(default=5.0, gt=0)
    reconnect_grace_s: float = Field(default=10.0, ge=0)  # re-create the session within this
    publishing_interval_ms: float = Field(default=100.0, gt=0)
    sampling_interval_ms: float = Field(default=50.0, ge=0)
    queue_size: int = Field(default=1, ge=0)
    # Bounds one publish response. Decoding happens on the client thread, so a big
    # response delays no printer; fewer, bigger responses cost fewer round trips
    # and wake-ups than many small ones.
    max_notifications_per_publish: int = Field(default=1000, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0)
    max_nodes_per_read: int = Field(default=1000, ge=1)
    max_writes_per_s: float = Field(default=20.0, gt=0)  # e-stop is never held back
    tags: dict[str, TagSpec] = Field(default_factory=dict)
    state: StateSpec | None = None
    program: ProgramSpec | None = None
    heartbeat: HeartbeatSpec | None = None
    pause: ActionSpec | None = None
    resume: ActionSpec | None = None
    stop: ActionSpec | None = None
    emergency_stop: ActionSpec | None = None
    reset: ActionSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        if (self.security_policy == "None") != (self.security_mode == "None"):
            problems.append(
                'security_policy = "Basic256Sha256" goes with security_mode "Sign" or '
                '"SignAndEncrypt"; policy "None" with mode "None"'
            )
        if self.security_policy != "None" and (
            self.certificate is None or self.private_key is None
        ):
            problems.append("Basic256Sha256 needs certificate and private_key")
        if (self.password is None) != (self.username is None):
            problems.append("username and password go together")
        names = set(self.tags)

        def need(where: str, tag: str | None) -> None:
            if tag is not None and tag not in names:
                problems.append(f"{where}: {tag!r} is not in tags")

        if self.state is not None:
            need("state.tag", self.state.tag)
            need("state.alarm_tag", self.state.alarm_tag)
        if self.heartbeat is not None:
            need("heartbeat.tag", self.heartbeat.tag)
        if self.program is not None:
            p = self.program
            for key in (
                "number_tag",
                "request_tag",
                "ack_tag",
                "done_tag",
                "error_tag",
                "run_counter_tag",
                "progress_tag",
            ):
                need(f"program.{key}", getattr(p, key))
        for key in ("pause", "resume", "stop", "emergency_stop", "reset"):
            action: ActionSpec | None = getattr(self, key)
            if action is not None:
                need(f"{key}.tag", action.tag)
        uses_default = any("nsu=" not in t.node for t in self.tags.values())
        if uses_default and self.namespace_uri is None and self.tags:
            problems.append("namespace_uri is required when a tag's node has no nsu=")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def start_problems(self, backend: str) -> list[StartProblem]:
        out: list[StartProblem] = []
        if backend == "real" and not self.endpoint:
            out.append(
                StartProblem("endpoint", 'required with backend = "real": "opc.tcp://host:port/…"')
            )
        elif backend == "real" and not str(self.endpoint).startswith("opc.tcp://"):
            out.append(
                StartProblem("endpoint", f"expected opc.tcp://host:port/…, got {self.endpoint!r}")
            )
        from . import certs  # cryptography and asyncua: only when a config is checked

        if self.certificate is not None:
            try:
                certs.load_certificate(self.certificate)
            except (OSError, ValueError) as exc:
                out.append(StartProblem("certificate", _unloadable(self.certificate, exc)))
        if self.private_key is not None:
            try:
                certs.load_private_key(self.private_key)
            except (OSError, ValueError, TypeError) as exc:
                out.append(StartProblem("private_key", _unloadable(self.private_key, exc)))
        for i, loc in enumerate(self.trusted_server_certs):
            try:
                if not loc.exists():
                    raise FileNotFoundError(2, "No such file or directory")
                certs.trusted_certificates([loc])
            except (OSError, ValueError) as exc:
                out.append(StartProblem(f"trusted_server_certs.{i}", _unloadable(loc, exc)))
        return out


def _unloadable(path: Path, exc: BaseException) -> str:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot load {path}: {why}"
