"""The cell's configuration: one TOML file parsed once into frozen models.

Every mistake is reported as `<file>: <key path>: <what was expected>`, all
of them at once, and never as a traceback. Driver sections are validated by
the driver's own `Options` model, looked up in the registry by `driver`.

Later features add their own top-level sections to `CellConfig`.
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cellctl.access import AccessSection
from cellctl.command_limits import CommandsSection
from cellctl.driver import DriverOptions, Secret, SimOptions
from cellctl.errors import ConfigError, DriverNotFound
from cellctl.jobs.policy import DENY_ENTRY, rule_ids
from cellctl.panel.config import PanelSection
from cellctl.registry import Registry
from cellctl.scheduler_config import SchedulerSection
from cellctl.telemetry.sparkplug.settings import SparkplugSection

ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CellSection(Strict):
    name: str = Field(pattern=ID_PATTERN)
    description: str = ""
    # Where the store and job files live. Default: $STATE_DIRECTORY (systemd's
    # StateDirectory=) or `state/` beside the config file.
    state_dir: Path | None = None


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LoggingSection(Strict):
    level: LogLevel = LogLevel.INFO
    format: Literal["auto", "json", "console"] = "auto"


class SimPlacement(enum.StrEnum):
    """Where `backend = "sim"` devices' simulators run (docs/architecture.md)."""

    PROCESS = "process"  # each its own child process (`cellctl sim`), as a real device is
    IN_PROCESS = "in-process"  # in the daemon's event loop (tests that reach into a simulator)


class SupervisorSection(Strict):
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, le=1)
    connect_timeout_s: float = Field(default=15.0, gt=0)
    disconnect_timeout_s: float = Field(default=5.0, gt=0)
    # A device whose link stayed up this long resets its backoff.
    stable_after_s: float = Field(default=30.0, ge=0)
    # SIGTERM/SIGINT: the daemon exits within this bound.
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    # How long a worker thread (an OPC UA client, the store) may hold Python's
    # interpreter lock before the event loop, which streams to every printer, gets
    # it back. Python's default, 5 ms, is tuned for throughput, not for latency.
    thread_switch_ms: float = Field(default=1.0, gt=0, le=100)
    # Simulators run in child processes unless a test needs them in the daemon; a
    # simulator registered in-process only (a test's `extra_sims`) always runs in it.
    simulators: SimPlacement = SimPlacement.PROCESS
    # How long a simulator process may take to start and print its endpoint.
    sim_start_timeout_s: float = Field(default=60.0, gt=0)


class MqttTls(Strict):
    """TLS to the broker: a CA to trust it, and optionally a client certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    # Only for test rigs: skip the broker host name check (never the chain).
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    # Default: cellctl-<cell name>. Two daemons must never share one.
    client_id: str = ""
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # v2: commands on cmd/<user>/<command>, replies under replies/<user>/ (docs/mqtt.md).
    topic_prefix: str = Field(default="cellctl/v2", pattern=r"^[^#+]+[^/#+]$")
    # Also take v1 commands (`cmd/<command>`, no user): they may do only what [access]
    # gives everyone. A migration aid; their replies can be forged.
    legacy_commands: bool = False
    username: str | None = None
    password: Secret | None = None
    tls: MqttTls | None = None
    # Start an in-process broker (amqtt) on host:port when nothing listens there.
    embedded: bool = False
    # Its users (amqtt's `user:<argon2 hash>` lines; docs/mqtt.md), relative to this
    # file; required for `embedded` unless [access] allow_anonymous = true.
    embedded_password_file: Path | None = None
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    reconnect_jitter: float = Field(default=0.3, ge=0, le=1)
    samples_qos: Literal[0, 1] = 0
    # Spooled messages kept at most; past it samples go first, events never.
    spool_max: int = Field(default=100_000, ge=100)
    # Group commit: events arriving within this window share one transaction (one
    # fsync); 0 commits at once and groups what arrives during an fsync. Events are
    # sent while their commit is pending, so the window costs no latency.
    spool_commit_s: float = Field(default=0.02, ge=0)
    max_inflight: int = Field(default=1000, ge=1, le=65535)
    # Also run as a Sparkplug B edge node, on a second connection (docs/sparkplug.md).
    sparkplug: SparkplugSection | None = None


class MetricPolicy(Strict):
    """How one metric is published. `deadband` is absolute, in the metric's unit
    (None: the default for its unit, cellctl/telemetry/policy.py)."""

    min_interval_s: float = Field(default=0.0, ge=0)
    deadband: float | None = Field(default=None, ge=0)


class TelemetrySection(Strict):
    # A device's samples are collected this long and sent as one message (0: at once).
    batch_s: float = Field(default=0.0, ge=0)
    # A samples message never holds more than this many samples.
    batch_max: int = Field(default=500, ge=1)
    # Report by exception: a metric goes out when it moved past its deadband (or its
    # quality changed), and at least every heartbeat_s; false: every sample read.
    report_by_exception: bool = True
    heartbeat_s: float = Field(default=60.0, ge=0)  # 0: no heartbeat
    default: MetricPolicy = MetricPolicy()
    # Glob on "<device>/<metric>" → policy; the first matching pattern wins.
    metrics: dict[str, MetricPolicy] = Field(default_factory=dict)


class RecoveryPolicy(enum.StrEnum):
    """What the job service does with a step that was running when the daemon died."""

    HOLD = "hold"  # wait for an operator: retry, resume from a line, fail (the default)
    RESTART = "restart"  # run it again from the start (safe only for idempotent steps)
    FAIL = "fail"  # fail the step and its job


class JobsSection(Strict):
    """`[jobs]`: the job service and its hot folder."""

    # A folder watched for job files (TOML job descriptions, bare G-code files);
    # relative to the config file. Unset: no hot folder.
    hotfolder: Path | None = None
    # A file must stay unchanged this long before it is read (half-written files wait).
    hotfolder_settle_s: float = Field(default=1.0, ge=0)
    hotfolder_poll_s: float = Field(default=0.5, gt=0)
    # A TOML job whose programs are not all there yet is rejected after this long.
    hotfolder_missing_s: float = Field(default=30.0, ge=0)
    # Limits on every file dropped in the hot folder (per-firmware limits are pre-flight's):
    # a longer line, comments included, or a bigger file goes to rejected/ unread.
    hotfolder_max_line: int = Field(default=32_768, ge=96)
    hotfolder_max_bytes: int = Field(default=1 << 30, ge=1)
    # The process a bare G-code file dropped in the hot folder asks for.
    hotfolder_process: str = Field(default="print", min_length=1)
    # Per file suffix, the process a bare G-code file asks for instead (CNC programs).
    hotfolder_suffix_process: dict[str, str] = Field(
        default_factory=lambda: {".nc": "mill", ".ngc": "mill"}
    )
    # How often the last acknowledged G-code line of running steps is stored.
    progress_flush_s: float = Field(default=2.0, gt=0)
    # How often dispatch looks again when nothing woke it (devices coming back …).
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    # Bound for a device's own program check (GRBL `$C`).
    device_check_timeout_s: float = Field(default=120.0, gt=0)
    # Bound for a step's controlled stop on cancel before it is cancelled hard.
    stop_timeout_s: float = Field(default=10.0, gt=0)


class JobPolicySection(Strict):
    """`job_policy` of a device: what its jobs may do beyond the firmware's defaults
    (docs/jobs.md, "What a job may not do")."""

    # Rule ids of the firmware's policy lifted for this device (`M92`, `$X`).
    allow: tuple[str, ...] = ()
    # More commands its jobs may not use: `M106`, `G29`, `$H`, `$J=`.
    deny: tuple[Annotated[str, Field(pattern=DENY_ENTRY)], ...] = ()


class StoreSection(Strict):
    """The SQLite store in the state directory (docs/jobs.md, "Keeping the store")."""

    # New jobs are refused while the disk holding the state directory has less free than
    # this: the room left is for the transitions and audit rows of work already accepted.
    min_free_mb: float = Field(default=64.0, ge=0)
    # Finished jobs (with their steps and transitions), done local requests and command
    # audit rows older than this are deleted …
    retention_days: float = Field(default=30.0, gt=0)
    # … and never more than this many finished jobs, or audit rows, are kept.
    retention_max_jobs: int = Field(default=10_000, ge=1)
    retention_max_audit: int = Field(default=100_000, ge=1)
    # How often retention runs (and once at start).
    retention_interval_s: float = Field(default=3600.0, gt=0)


class DeviceCommon(Strict):
    """Keys every device has; all other keys of its table belong to the driver."""

    driver: str
    backend: Literal["real", "sim"] = "real"
    enabled: bool = True
    description: str = ""
    # What work the device can take (`print`, `mill`, `tend`, `plc-cycle` …).
    processes: tuple[str, ...] = ()
    # What is loaded at first start (material, nozzle, tool, fixture …).
    setup: dict[str, str] = Field(default_factory=dict)
    # Jobs: what happens to a step that was running when the daemon died.
    recovery: RecoveryPolicy = RecoveryPolicy.HOLD
    # Jobs: X, Y, Z in mm; G-code is checked against it before a step starts.
    build_volume: tuple[float, float, float] | None = None
    # Jobs: let the device check a program before running it when its driver can
    # (GRBL `$C` check mode).
    program_check: bool = True
    # Jobs: the job-content policy of the device's firmware, loosened or tightened.
    job_policy: JobPolicySection = JobPolicySection()

    @model_validator(mode="after")
    def _known_rules(self) -> DeviceCommon:
        known = rule_ids(self.driver)
        unknown = [a for a in self.job_policy.allow if known is None or a not in known]
        if unknown:
            have = ", ".join(sorted(known)) if known else "none"
            raise ValueError(
                f"job_policy.allow: {', '.join(unknown)} not a rule of driver "
                f"{self.driver!r} (its rules: {have})"
            )
        return self


COMMON_KEYS = frozenset(DeviceCommon.model_fields) | {"sim"}


class DeviceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    common: DeviceCommon
    options: DriverOptions
    sim: SimOptions | None = None

    @property
    def driver(self) -> str:
        return self.common.driver

    @property
    def raw_equal_key(self) -> str:
        """A stable fingerprint: equal fingerprints mean a reload need not touch the device."""
        return json.dumps(
            [
                self.common.model_dump(mode="json"),
                self.options.model_dump(mode="json"),
                self.sim.model_dump(mode="json") if self.sim else None,
            ],
            sort_keys=True,
        )


class CellConfig(Strict):
    """The top level of the file. `devices` is validated in a second pass."""

    cell: CellSection
    devices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    logging: LoggingSection = LoggingSection()
    supervisor: SupervisorSection = SupervisorSection()
    # MQTT telemetry and commands (issue 8); absent: the cell runs without MQTT.
    mqtt: MqttSection | None = None
    telemetry: TelemetrySection = TelemetrySection()
    jobs: JobsSection = JobsSection()
    store: StoreSection = StoreSection()
    # Who may send which command (cellctl/access.py); absent: estop for everyone, no more.
    access: AccessSection = AccessSection()
    # Bounds of the command path: payload cap, lanes, rate, paging, uploads (issue 23).
    commands: CommandsSection = CommandsSection()
    # `cellctl panel`, the HTTP front end (docs/panel.md); read only by it.
    panel: PanelSection = PanelSection()
    # Which dispatcher runs the cell: the baseline rule or the live planner (issue 20).
    scheduler: SchedulerSection = SchedulerSection()

    @model_validator(mode="after")
    def _hotfolder_may_submit(self) -> CellConfig:
        user = self.access.hotfolder_user
        if self.jobs.hotfolder is not None and not self.access.hotfolder_may_submit():
            raise ValueError(
                f"jobs.hotfolder: the hot folder submits as user {user!r} "
                "([access] hotfolder_user), whose roles in [access.users] do not allow "
                "submit: give it a role with submit (planner), or remove the hot folder"
            )
        return self

    @model_validator(mode="after")
    def _automatic_devices_exist(self) -> CellConfig:
        problems = self.scheduler.device_problems(self.devices)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _embedded_needs_users(self) -> CellConfig:
        mqtt = self.mqtt
        if mqtt is None or not mqtt.embedded or self.access.allow_anonymous:
            return self
        if mqtt.embedded_password_file is None or not mqtt.username:
            raise ValueError(
                "mqtt.embedded: the embedded broker keeps users apart only with "
                "[mqtt] username (the cell's own user) and embedded_password_file; "
                "or set [access] allow_anonymous = true (demo only)"
            )
        return self


class Cell(BaseModel):
    """The parsed, validated cell: what every other part is given."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: Path
    config: CellConfig
    devices: Mapping[str, DeviceConfig]

    @property
    def name(self) -> str:
        return self.config.cell.name

    @property
    def state_dir(self) -> Path:
        if self.config.cell.state_dir is not None:
            return self.source.parent / self.config.cell.state_dir
        env = os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        return self.source.parent / "state"

    @property
    def hotfolder(self) -> Path | None:
        folder = self.config.jobs.hotfolder
        return None if folder is None else self.source.parent / folder


# --- error messages -------------------------------------------------------

_EXPECT = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "list_type": "expected an array",
    "tuple_type": "expected an array",
    "path_type": "expected a path string",
}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _members(tp: Any) -> list[Any]:
    """The types a field annotation allows (Optional, unions and Annotated unwrapped)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    return [] if tp is type(None) else [tp]


def _inner(tp: Any, part: str | int) -> Any:
    """The annotation one step (`part` of an error location) inside `tp`; None: unknown."""
    for m in _members(tp):
        if isinstance(m, type) and issubclass(m, BaseModel):
            if part == m.__name__:  # pydantic names the union member it tried
                return m
            field = m.model_fields.get(str(part))
            if field is not None:
                return field.annotation
    for m in _members(tp):
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin is dict and len(args) == 2:
            return args[1]
        if origin in (list, tuple) and args and isinstance(part, int):
            return args[0]
    return None


def known_keys(model: Any, loc: Sequence[str | int]) -> list[str]:
    """The keys the table at `loc` inside `model` may hold ([] when it cannot be told)."""
    tp = model
    for part in loc:
        tp = _inner(tp, part)
        if tp is None:
            return []
    return [
        (f.alias or name)
        for m in _members(tp)
        if isinstance(m, type) and issubclass(m, BaseModel)
        for name, f in m.model_fields.items()
    ]


def _unknown_key(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def _describe(err: Mapping[str, Any], model: Any = None, extra: Collection[str] = ()) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        loc = tuple(err["loc"])
        known = set(known_keys(model, loc[:-1])) if model is not None and loc else set()
        if len(loc) == 1:
            known |= set(extra)
        return _unknown_key(str(loc[-1]), known) if loc else "unknown key"
    got = f", got {_show(err.get('input'))}"
    if kind in _EXPECT:
        return _EXPECT[kind] + got
    msg = str(err.get("msg", "invalid value"))
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    msg = re.sub(r"^Input should be ", "expected ", msg)
    msg = re.sub(r"^String should match pattern ", "expected a name matching ", msg)
    if kind in ("value_error", "assertion_error"):
        return msg
    return msg[0].lower() + msg[1:] + got


def _problems(
    source: Path,
    exc: ValidationError,
    prefix: tuple[str | int, ...] = (),
    model: Any = None,
    extra: Collection[str] = (),
) -> list[str]:
    """One line per error; an unknown key names the closest known one of `model` (and,
    at its top level, of `extra`)."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"]) if p not in ("function-after",))
        out.append(f"{source}: {loc or '(top level)'}: {_describe(err, model, extra)}")
    return out


def _load_toml(source: Path) -> dict[str, Any]:
    try:
        text = source.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}: is a directory, expected a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"{source}: permission denied"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
    if not text.strip():
        raise ConfigError([f"{source}: the file is empty; expected at least [cell] with a name"])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        dup = re.match(r"Cannot declare \('devices', '([^']*)'\) twice(.*)", msg)
        if dup:
            msg = f"duplicate device id {dup.group(1)!r}{dup.group(2)}"
        raise ConfigError([f"{source}: TOML syntax error: {msg}"]) from None


def _device(
    source: Path, dev_id: str, raw: Any, registry: Registry, problems: list[str]
) -> DeviceConfig | None:
    where = f"{source}: devices.{dev_id}"
    if not re.match(ID_PATTERN, dev_id):
        problems.append(
            f"{where}: device id must start with a letter and hold only "
            "letters, digits, '-' and '_' (at most 64)"
        )
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a table, got {_show(raw)}")
        return None
    common_raw = {k: v for k, v in raw.items() if k in COMMON_KEYS and k != "sim"}
    try:
        common = DeviceCommon.model_validate(common_raw)
    except ValidationError as exc:
        problems.extend(_problems(source, exc, ("devices", dev_id)))
        return None
    try:
        driver_cls = registry.driver(common.driver)
    except DriverNotFound as exc:
        problems.append(f"{where}.driver: {exc}")
        return None
    before = len(problems)
    option_raw = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    options: DriverOptions | None = None
    try:
        options = driver_cls.Options.model_validate(option_raw)
    except ValidationError as exc:
        problems.extend(
            _problems(source, exc, ("devices", dev_id), driver_cls.Options, COMMON_KEYS)
        )
    sim: SimOptions | None = None
    sim_raw = raw.get("sim")
    if common.backend == "sim" or sim_raw is not None:
        if sim_raw is not None and not isinstance(sim_raw, dict):
            problems.append(f"{where}.sim: expected a table, got {_show(sim_raw)}")
        else:
            try:
                sim_options = registry.simulator_options(driver_cls.simulator)
                sim = sim_options.model_validate(sim_raw or {})
            except DriverNotFound as exc:
                problems.append(
                    f"{where}.backend: no simulator for driver {common.driver!r}: {exc}"
                )
            except ValidationError as exc:
                problems.extend(_problems(source, exc, ("devices", dev_id, "sim"), sim_options))
    if len(problems) > before or options is None:
        return None
    return DeviceConfig(id=dev_id, common=common, options=options, sim=sim)


def parse(source: Path, data: Any, registry: Registry | None = None) -> Cell:
    """Validate an already-decoded document. Raises ConfigError with every problem."""
    registry = registry or Registry()
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a table at the top level"])
    problems: list[str] = []
    try:
        top = CellConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(source, exc, model=CellConfig))
        top = None
    devices: dict[str, DeviceConfig] = {}
    raw_devices = data.get("devices", {})
    if isinstance(raw_devices, dict):
        seen: dict[str, str] = {}
        for dev_id, raw in raw_devices.items():
            folded = str(dev_id).lower()
            if folded in seen:
                problems.append(
                    f"{source}: devices.{dev_id}: duplicate device id "
                    f"(same as {seen[folded]!r} but for case)"
                )
                continue
            seen[folded] = str(dev_id)
            dev = _device(source, str(dev_id), raw, registry, problems)
            if dev is not None:
                devices[dev.id] = dev
    if problems or top is None:
        raise ConfigError(problems)
    return Cell(source=source, config=top, devices=devices)


def load(path: str | Path, registry: Registry | None = None) -> Cell:
    source = Path(path)
    return parse(source, _load_toml(source), registry)


def load_settings(path: str | Path) -> CellConfig:
    """The top-level sections only; device tables are left unchecked.

    For clients of a running cell (the CLI over MQTT): they need its name, broker
    and job defaults, and may run where the cell's driver packages are not installed.
    """
    source = Path(path)
    data = _load_toml(source)
    try:
        return CellConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(source, exc, model=CellConfig)) from None
