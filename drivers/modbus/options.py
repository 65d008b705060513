"""The `modbus` driver's config section: link, register map, polling, handshake, commands.

Everything a PLC integrator changes lives here; no PLC needs code. Parsed
once, strictly: unknown keys, a tag that names a missing tag, a string
longer than one read, a write to an input register are start-up errors.
"""

from __future__ import annotations

import enum
import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cellctl.driver import DriverOptions, StartProblem

from ..serial.startcheck import port_problems
from .codec import DataType, Order, register_count

MAX_REGISTERS = 125  # FC3/FC4 read limit (Modbus application protocol 1.1b3, 6.3/6.4)
MAX_BITS = 2000  # FC1/FC2 read limit
MAX_WRITE_REGISTERS = 123  # FC16
TAG_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Table(enum.StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def can_write(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)


class Tag(_Strict):
    """One named value in the PLC."""

    table: Table
    address: int = Field(ge=0, le=65535)
    type: DataType | None = None  # default: bool for bits, uint16 for registers
    length: int = Field(default=0, ge=0, le=2 * MAX_REGISTERS)  # string length in bytes
    bit: int | None = Field(default=None, ge=0, le=15)  # a bool inside a register
    word_order: Order | None = None  # default: the device's
    byte_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False
    unit: str = ""
    description: str = ""
    group: str = "default"  # polling group; "" = never polled (handshake-only, write-only)

    @model_validator(mode="after")
    def _check(self) -> Self:
        dtype = self.dtype
        if self.table.is_bits and dtype != DataType.BOOL:
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {dtype}")
        if self.writable and not self.table.can_write:
            raise ValueError(f"a {self.table} is read-only in Modbus; writable = true is invalid")
        if dtype == DataType.STRING and self.length < 1:
            raise ValueError("a string tag needs length = <bytes> (at least 1)")
        if dtype != DataType.STRING and self.length:
            raise ValueError("length applies to string tags only")
        if self.bit is not None and (self.table.is_bits or dtype != DataType.BOOL):
            raise ValueError("bit applies to bool tags in a holding or input register only")
        if self.bit is not None and self.writable:
            raise ValueError(
                "a bit inside a register cannot be written without a read-modify-write"
            )
        if (self.scale != 1.0 or self.offset != 0.0) and dtype in (DataType.BOOL, DataType.STRING):
            raise ValueError(f"scale and offset do not apply to {dtype}")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.size > 65536:
            raise ValueError("the tag runs past address 65535")
        return self

    @property
    def dtype(self) -> DataType:
        if self.type is not None:
            return self.type
        return DataType.BOOL if self.table.is_bits else DataType.UINT16

    @property
    def size(self) -> int:
        """Addresses the tag occupies in its table (bits for coils, registers otherwise)."""
        if self.table.is_bits:
            return 1
        return register_count(self.dtype, self.length)

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0

    def where(self) -> str:
        return f"{self.table} {self.address}"


class Group(_Strict):
    interval_s: float = Field(gt=0)


class Write(_Strict):
    """One write of a command: a value to a tag, optionally put back after `pulse_s`."""

    tag: str
    value: bool | int | float | str = True
    pulse_s: float | None = Field(default=None, gt=0)


class Commands(_Strict):
    pause: tuple[Write, ...] = ()
    resume: tuple[Write, ...] = ()
    stop: tuple[Write, ...] = ()
    emergency_stop: tuple[Write, ...] = ()
    reset: tuple[Write, ...] = ()


class StatusTags(_Strict):
    """Tags that tell the driver the PLC's own state (all optional)."""

    estop: str | None = None  # true: e-stop active → ABORTED
    fault: str | None = None  # true or non-zero: faulted → ABORTED
    held: str | None = None  # true: paused → HELD
    running: str | None = None  # true: a cycle is running → EXECUTE


class Recipe(_Strict):
    """The recipe handshake a job step runs (see docs/modbus.md)."""

    request: str  # written true to start, false after the acknowledge
    ack: str
    done: str
    error: str  # non-zero = the PLC's error code for the cycle
    busy: str | None = None  # true while the cycle runs after the handshake
    token: str | None = None  # a register the host writes with the step's token
    recipe_number: str | None = None  # gets Program.name when it is a number
    progress: str | None = None  # 0..1 (or 0..100 with progress_percent)
    progress_percent: bool = False
    parameters: dict[str, str] = Field(default_factory=dict)  # step parameter → tag
    ack_timeout_s: float = Field(default=5.0, gt=0)
    clear_timeout_s: float = Field(default=5.0, gt=0)
    done_timeout_s: float = Field(default=300.0, gt=0)
    poll_s: float = Field(default=0.05, gt=0)
    # After stop(): how long to wait for the PLC to end the cycle.
    stop_timeout_s: float = Field(default=5.0, gt=0)


class Heartbeat(_Strict):
    tag: str
    interval_s: float = Field(default=1.0, gt=0)


class Serial(_Strict):
    port: str
    baudrate: int = Field(default=19200, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1


class ModbusOptions(DriverOptions):
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    serial: Serial | None = None
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=1.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    # Read merging: unmapped addresses a read may span, and the largest read.
    max_gap: int = Field(default=8, ge=0, le=MAX_REGISTERS)
    max_count: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_bits_gap: int = Field(default=32, ge=0, le=MAX_BITS)
    max_bits_count: int = Field(default=MAX_BITS, ge=1, le=MAX_BITS)
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    poll_interval_s: float = Field(default=1.0, gt=0)  # the "default" group
    groups: dict[str, Group] = Field(default_factory=dict)
    tags: dict[str, Tag] = Field(default_factory=dict)
    status: StatusTags = StatusTags()
    commands: Commands = Commands()
    recipe: Recipe | None = None
    heartbeat: Heartbeat | None = None
    # Tags read at connect that must hold these values (model number, program
    # version): another PLC on that address is WrongDevice, not a link problem.
    identity: dict[str, bool | int | float | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[str] = []
        if self.transport == "rtu" and self.serial is None:
            problems.append('transport = "rtu" needs a [serial] table with port = "/dev/…"')
        if not self.tags:
            problems.append("tags: declare at least one tag")
        for name, tag in self.tags.items():
            if not re.match(TAG_NAME, name):
                problems.append(f"tags.{name}: a tag name is a letter then letters/digits/_.-")
            limit = self.max_bits_count if tag.table.is_bits else self.max_count
            if tag.size > limit:
                problems.append(f"tags.{name}: {tag.size} registers exceed max_count {limit}")
            if tag.group and tag.group != "default" and tag.group not in self.groups:
                problems.append(f"tags.{name}.group: no polling group {tag.group!r} in groups")

        def need(where: str, name: str | None, writable: bool = False) -> None:
            if name is None:
                return
            tag = self.tags.get(name)
            if tag is None:
                problems.append(f"{where}: no tag named {name!r} in tags")
            elif writable and not tag.writable:
                problems.append(f"{where}: tag {name!r} must be writable = true")

        for field_name in StatusTags.model_fields:
            need(f"status.{field_name}", getattr(self.status, field_name))
        for cmd in Commands.model_fields:
            for i, w in enumerate(getattr(self.commands, cmd)):
                need(f"commands.{cmd}[{i}].tag", w.tag, writable=True)
        if self.recipe is not None:
            r = self.recipe
            need("recipe.request", r.request, writable=True)
            for key in ("ack", "done", "error", "busy", "progress"):
                need(f"recipe.{key}", getattr(r, key))
            need("recipe.token", r.token, writable=True)
            need("recipe.recipe_number", r.recipe_number, writable=True)
            for param, tag_name in r.parameters.items():
                need(f"recipe.parameters.{param}", tag_name, writable=True)
        if self.heartbeat is not None:
            need("heartbeat.tag", self.heartbeat.tag, writable=True)
        for name in self.identity:
            need(f"identity.{name}", name)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def start_problems(self, backend: str) -> list[StartProblem]:
        if self.transport == "rtu":
            port = self.serial.port if self.serial is not None else ""
            return port_problems(port, backend, "serial.port")
        if backend == "real" and not self.host:
            return [StartProblem("host", 'required with backend = "real": the PLC\'s address')]
        return []

    def word_order_of(self, tag: Tag) -> Order:
        return tag.word_order or self.word_order

    def byte_order_of(self, tag: Tag) -> Order:
        return tag.byte_order or self.byte_order

    def interval_of(self, group: str) -> float:
        if group in self.groups:
            return self.groups[group].interval_s
        return self.poll_interval_s
