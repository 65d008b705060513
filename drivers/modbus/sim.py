"""A simulated PLC on a real pymodbus server: conveyor, clamp, door, counters, recipes.

It serves Modbus TCP, or with `transport = "rtu"` Modbus RTU on a pseudo-terminal
(see serial_line.py); `endpoint` is then the device path a client opens.

The process model runs in PLC time (`time_factor` times real time); the
heartbeat watchdog counts real seconds, because it watches the host.
Addresses outside the map answer Illegal Data Address, as many PLCs do, so
the driver's read merging has to respect its gap limit.

Register map (zero-based protocol addresses):

| table          | address | name               | meaning                                   |
|----------------|---------|--------------------|-------------------------------------------|
| coil           | 0       | conveyor_run       | host: run the conveyor (manual)            |
| coil           | 1       | clamp_close        | host: close the fixture clamp (manual)     |
| coil           | 2       | door_open          | host: open the door                        |
| coil           | 10      | cycle_request      | host: recipe request (handshake)           |
| coil           | 11      | hold               | host: pause the cycle while true           |
| coil           | 12      | stop               | host: rising edge aborts the cycle         |
| coil           | 13      | estop              | host: emergency stop while true            |
| coil           | 14      | reset              | host: rising edge clears faults / e-stop   |
| discrete_input | 0..3    | conveyor_running, clamp_closed, part_present, door_closed |  |
| discrete_input | 10..15  | cycle_ack, cycle_done, cycle_busy, faulted, estop_active, held | |
| holding        | 0       | heartbeat          | host changes it; watchdog faults the PLC   |
| holding        | 10      | recipe_number      | uint16                                     |
| holding        | 11      | cycle_token        | uint16, written by the host with a request |
| holding        | 12      | conveyor_speed     | float32, mm/s                              |
| holding        | 14      | clamp_force        | float32, N                                 |
| holding        | 16      | cycle_time_ds      | uint16, cycle time in 0.1 s (0: default)   |
| holding        | 20      | recipe_name        | string, 16 bytes                           |
| holding        | scratch | (free registers)   | default 1000..1199, for tests/benchmarks   |
| input          | 0       | plc_state          | see PlcState                               |
| input          | 1       | error_code         | see Err (or the injected `error_code`)     |
| input          | 2       | fault_code         | 0, 1 heartbeat lost, 2 e-stop              |
| input          | 10/12/14| parts_good, parts_bad, cycles_total | uint32                  |
| input          | 20      | conveyor_position  | float32, mm                                |
| input          | 22      | cycle_progress     | float32, 0..1                              |
| input          | 24      | uptime             | float64, PLC seconds                       |
| input          | 30      | temperature        | int16, 0.1 °C                              |
| input          | 40, 41  | model, program_version | the `model` option, 3 (identity check) |

Handshake: request↑ (idle, no fault) → ack↑, busy↑, done↓, error 0, token
latched; request↓ → ack↓; after the cycle time → busy↓ and done↑ (or an
error code). done stays until the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Self

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as PmDataType
from pymodbus.simulator import SimData, SimDevice

from .answers import READ_REQUESTS
from .cells import ADDRESSES, Cells
from .options import MAX_BITS, MAX_REGISTERS, Table
from .serial_line import SerialLine
from .simoptions import InjectedException, PlcSimOptions

_FC_TABLE = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    22: Table.HOLDING,
    23: Table.HOLDING,
    4: Table.INPUT,
}
READ_FCS = (1, 2, 3, 4)


REQUEST_LOG = 10_000


class PlcState(enum.IntEnum):
    IDLE = 0
    RUNNING = 1
    HELD = 2
    FAULTED = 3
    ESTOP = 4
    DONE = 5


class Err(enum.IntEnum):
    OK = 0
    NO_PART = 3
    DOOR_OPEN = 4
    STOPPED = 10
    ESTOP = 11
    WATCHDOG = 12


# name → (table, address, type, length)
LAYOUT: dict[str, tuple[Table, int, str, int]] = {
    "conveyor_run": (Table.COIL, 0, "bool", 0),
    "clamp_close": (Table.COIL, 1, "bool", 0),
    "door_open": (Table.COIL, 2, "bool", 0),
    "cycle_request": (Table.COIL, 10, "bool", 0),
    "hold": (Table.COIL, 11, "bool", 0),
    "stop": (Table.COIL, 12, "bool", 0),
    "estop": (Table.COIL, 13, "bool", 0),
    "reset": (Table.COIL, 14, "bool", 0),
    "conveyor_running": (Table.DISCRETE_INPUT, 0, "bool", 0),
    "clamp_closed": (Table.DISCRETE_INPUT, 1, "bool", 0),
    "part_present": (Table.DISCRETE_INPUT, 2, "bool", 0),
    "door_closed": (Table.DISCRETE_INPUT, 3, "bool", 0),
    "cycle_ack": (Table.DISCRETE_INPUT, 10, "bool", 0),
    "cycle_done": (Table.DISCRETE_INPUT, 11, "bool", 0),
    "cycle_busy": (Table.DISCRETE_INPUT, 12, "bool", 0),
    "faulted": (Table.DISCRETE_INPUT, 13, "bool", 0),
    "estop_active": (Table.DISCRETE_INPUT, 14, "bool", 0),
    "held": (Table.DISCRETE_INPUT, 15, "bool", 0),
    "heartbeat": (Table.HOLDING, 0, "uint16", 0),
    "recipe_number": (Table.HOLDING, 10, "uint16", 0),
    "cycle_token": (Table.HOLDING, 11, "uint16", 0),
    "conveyor_speed": (Table.HOLDING, 12, "float32", 0),
    "clamp_force": (Table.HOLDING, 14, "float32", 0),
    "cycle_time_ds": (Table.HOLDING, 16, "uint16", 0),
    "recipe_name": (Table.HOLDING, 20, "string", 16),
    "plc_state": (Table.INPUT, 0, "uint16", 0),
    "error_code": (Table.INPUT, 1, "uint16", 0),
    "fault_code": (Table.INPUT, 2, "uint16", 0),
    "parts_good": (Table.INPUT, 10, "uint32", 0),
    "parts_bad": (Table.INPUT, 12, "uint32", 0),
    "cycles_total": (Table.INPUT, 14, "uint32", 0),
    "conveyor_position": (Table.INPUT, 20, "float32", 0),
    "cycle_progress": (Table.INPUT, 22, "float32", 0),
    "uptime": (Table.INPUT, 24, "float64", 0),
    "temperature": (Table.INPUT, 30, "int16", 0),
    "model": (Table.INPUT, 40, "uint16", 0),
    "program_version": (Table.INPUT, 41, "uint16", 0),
}
_SIZES = {"bool": 1, "uint16": 1, "int16": 1, "uint32": 2, "float32": 2, "float64": 4}


def _size(kind: str, length: int) -> int:
    return (length + 1) // 2 if kind == "string" else _SIZES[kind]


class PlcMemory:
    """The PLC's four tables; reading an unmapped address answers Illegal Data Address.

    This is the datastore interface pymodbus's request PDUs call
    (`async_getValues` / `async_setValues`). The sim provides it directly
    rather than through `SimDevice.action`, which sees coil reads only as
    16-bit words and keeps a second register image to mirror.
    """

    def __init__(self, sim: PlcSim) -> None:
        self.sim = sim
        self.tables: dict[Table, Cells] = {t: Cells() for t in Table}

    def define(self, table: Table, address: int, count: int) -> None:
        self.tables[table].define(address, count)

    def device_ids(self) -> list[int]:
        return [self.sim.options.unit_id]

    def _check(
        self, device_id: int, func_code: int, address: int, count: int, writing: bool
    ) -> ExcCodes | None:
        unit = self.sim.options.unit_id
        if unit and device_id != unit:
            raise NoSuchIdException(f"unit {device_id}")
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        limit = MAX_BITS if table.is_bits else MAX_REGISTERS
        if func_code in READ_FCS and not 1 <= count <= limit:
            return ExcCodes.ILLEGAL_VALUE
        for inj in self.sim.exceptions:
            if inj.table == table and address <= inj.address < address + count:
                try:
                    return ExcCodes(inj.code)
                except ValueError:
                    return ExcCodes.DEVICE_FAILURE
        cells = self.tables[table]
        if writing or self.sim.options.strict_map:
            if not cells.all_mapped(address, count):
                return ExcCodes.ILLEGAL_ADDRESS
        elif address + count > ADDRESSES:
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if func_code in READ_FCS and self.sim.slow_s:
            await asyncio.sleep(self.sim.slow_s)
        if (err := self._check(device_id, func_code, address, count, False)) is not None:
            return err
        # Bits as 0/1: the answer classes (answers.py) pack them by truth.
        return self.tables[_FC_TABLE[func_code]].block(address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        if self.sim.slow_s:
            await asyncio.sleep(self.sim.slow_s)
        if (err := self._check(device_id, func_code, address, len(values), True)) is not None:
            return err
        table = _FC_TABLE[func_code]
        if table not in (Table.COIL, Table.HOLDING):
            return ExcCodes.ILLEGAL_FUNCTION
        cells = self.tables[table]
        request_at = LAYOUT["cycle_request"][1]
        if table == Table.COIL and address <= request_at < address + len(values):
            if values[request_at - address]:
                self.sim.request_sets += 1
        for i, v in enumerate(values):
            old = cells[address + i]
            new = int(bool(v)) if table.is_bits else int(v) & 0xFFFF
            cells[address + i] = new
            if old != new:
                self.sim.on_host_write(table, address + i, old, new)
        if self.sim.drop_on_request and table == Table.COIL and address == request_at:
            # The write took effect, its answer is lost: the host cannot know which.
            self.sim.drop_on_request = False
            self.sim.drop_connections()
        return None


class PlcSim:
    """The simulated PLC. `endpoint` is host:port while entered."""

    name: ClassVar[str] = "modbus-plc"
    Options: ClassVar[type[PlcSimOptions]] = PlcSimOptions

    def __init__(self, options: PlcSimOptions | None = None) -> None:
        self.options = options or PlcSimOptions()
        o = self.options
        self.slow_s = o.slow_s
        self.exceptions: list[InjectedException] = list(o.exceptions)
        self.drop_every = o.drop_every
        self.no_ack = o.no_ack
        self.error_code = o.error_code
        self.memory = PlcMemory(self)
        for _name, (table, address, kind, length) in LAYOUT.items():
            self.memory.define(table, address, _size(kind, length))
        for start, count in o.scratch:
            self.memory.define(Table.HOLDING, start, count)
        self.set("part_present", o.part_present)
        self.set("door_closed", True)
        self.set("conveyor_speed", o.conveyor_speed)
        self.set("temperature", 215)
        self.set("model", o.model)
        self.set("program_version", 3)
        self.requests: Counter[int] = Counter()  # function code → requests seen
        # (fc, address, count) of the latest requests: bounded, as the sim may run for weeks.
        self.request_log: deque[tuple[int, int, int]] = deque(maxlen=REQUEST_LOG)
        self.request_edges = 0  # rising edges of cycle_request (cycles asked for)
        self.request_sets = 0  # write requests that set cycle_request true, changed or not
        # Fault injection: drop every connection while answering the next request write.
        self.drop_on_request = False
        self.connections_dropped = 0
        self.restarts = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._line: SerialLine | None = None
        self._port = o.port
        self._ticker: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._cycle_left = 0.0
        self._cycle_total = 0.0
        self._hb_last_change: float | None = None
        self._uptime = 0.0

    # --- values by name ------------------------------------------------------

    def get(self, name: str) -> Any:
        table, address, kind, length = LAYOUT[name]
        cells = self.memory.tables[table]
        if kind == "bool":
            return bool(cells[address])
        words = [cells[a] for a in range(address, address + _size(kind, length))]
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        if kind == "string":
            return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
        fmt = {"uint16": "H", "int16": "h", "uint32": "I", "float32": "f", "float64": "d"}[kind]
        return struct.unpack(">" + fmt, raw)[0]

    def set(self, name: str, value: Any) -> None:
        table, address, kind, length = LAYOUT[name]
        cells = self.memory.tables[table]
        if kind == "bool":
            cells[address] = int(bool(value))
            return
        if kind == "string":
            raw = str(value).encode()[:length].ljust(_size(kind, length) * 2, b"\x00")
        else:
            fmt = {"uint16": "H", "int16": "h", "uint32": "I", "float32": "f", "float64": "d"}[kind]
            raw = struct.pack(">" + fmt, value)
        for i in range(0, len(raw), 2):
            cells[address + i // 2] = int.from_bytes(raw[i : i + 2], "big")

    # --- lifecycle -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port for TCP; for RTU the path of the serial device to open."""
        if self._line is not None:
            return self._line.path
        return f"{self.options.host}:{self._port}"

    async def _start_server(self) -> None:
        # The placeholder SimDevice satisfies the constructor; requests go to PlcMemory.
        placeholder = SimDevice(
            id=self.options.unit_id, simdata=SimData(1, values=0, datatype=PmDataType.REGISTERS)
        )
        server: ModbusTcpServer | ModbusSerialServer
        if self._line is not None:
            server = ModbusSerialServer(
                placeholder,
                framer=FramerType.RTU,
                port=self._line.server_port,
                stopbits=2,  # no parity: the spec's 8N2
                parity="N",
                trace_pdu=self._trace_pdu,
                custom_pdu=list(READ_REQUESTS),
            )
        else:
            server = ModbusTcpServer(
                placeholder,
                address=(self.options.host, self._port),
                trace_pdu=self._trace_pdu,
                custom_pdu=list(READ_REQUESTS),
            )
        server.context = self.memory  # type: ignore[assignment]
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self._port = sockets[0].getsockname()[1]
        self._server = server

    async def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            for conn in list(server.active_connections.values()):
                with contextlib.suppress(Exception):
                    conn.close()
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        if self.options.transport == "rtu":
            self._line = SerialLine()
            await self._line.__aenter__()
        try:
            await self._start_server()
        except BaseException:
            line, self._line = self._line, None
            if line is not None:
                await line.__aexit__(None, None, None)
            raise
        self._last_tick = time.monotonic()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop(), name="plc-sim")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self._stop_server()
        line, self._line = self._line, None
        if line is not None:
            await line.__aexit__(None, None, None)

    # --- fault injection -----------------------------------------------------

    def drop_connections(self) -> int:
        """Close every client connection now (the server keeps listening).

        Over RTU there is no connection: the client's cable is pulled and plugged
        back in, and what was on the wire is lost."""
        if self._line is not None:
            self._line.unplug_client()
            self.connections_dropped += 1
            return 1
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self.connections_dropped += len(conns)
        return len(conns)

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (dropping every client), stay down `down_s`, listen again."""
        await self._stop_server()
        if down_s:
            await asyncio.sleep(down_s)
        await self._start_server()
        self.restarts += 1

    def inject_exception(self, table: Table, address: int, code: int = 6) -> None:
        self.exceptions.append(InjectedException(table=table, address=address, code=code))

    # --- observation for tests -----------------------------------------------

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            fc = int(pdu.function_code)
            self.requests[fc] += 1
            count = getattr(pdu, "count", 0) or len(getattr(pdu, "registers", []) or [])
            self.request_log.append((fc, int(getattr(pdu, "address", 0)), int(count)))
            if self.drop_every and self.requests.total() % self.drop_every == 0:
                asyncio.get_running_loop().call_soon(self.drop_connections)
        return pdu

    @property
    def request_total(self) -> int:
        return self.requests.total()

    async def wait_until(self, pred: Callable[[PlcSim], bool]) -> None:
        """Return once `pred(sim)` holds (checked every PLC tick). Callers bound the wait."""
        async with self._changed:
            await self._changed.wait_for(lambda: pred(self))

    # --- the PLC program -------------------------------------------------------

    def on_host_write(self, table: Table, address: int, old: int, new: int) -> None:
        if table == Table.HOLDING and address == LAYOUT["heartbeat"][1]:
            self._hb_last_change = time.monotonic()
            return
        if table != Table.COIL:
            return
        if address == LAYOUT["cycle_request"][1]:
            if new:
                self._on_request()
            elif self.get("cycle_ack"):
                self.set("cycle_ack", False)
        elif address == LAYOUT["stop"][1] and new:
            if self.get("cycle_busy"):
                self._end_cycle(Err.STOPPED)
        elif address == LAYOUT["estop"][1] and new:
            self._estop()
        elif address == LAYOUT["reset"][1] and new:
            self._reset()
        elif address == LAYOUT["hold"][1]:
            self.set("held", bool(new))
        self._update_outputs()

    def _on_request(self) -> None:
        self.request_edges += 1
        if self.get("estop_active") or self.get("faulted") or self.get("cycle_busy"):
            return  # a PLC ignores requests it cannot take; the host times out on ack
        if self.no_ack:
            return
        self.set("cycle_ack", True)
        self.set("cycle_done", False)
        self.set("error_code", 0)
        if not self.get("door_closed"):
            self.set("error_code", Err.DOOR_OPEN)
            return
        self.set("cycle_busy", True)
        ds = self.get("cycle_time_ds")
        self._cycle_total = ds / 10 if ds else self.options.cycle_time_s
        self._cycle_left = self._cycle_total
        self.set("cycle_progress", 0.0)
        self.set("clamp_closed", True)

    def _end_cycle(self, error: int) -> None:
        self.set("cycle_busy", False)
        self.set("clamp_closed", bool(self.get("clamp_close")))
        self.set("cycles_total", (self.get("cycles_total") + 1) % 2**32)
        if error:
            self.set("error_code", error)
            self.set("parts_bad", (self.get("parts_bad") + 1) % 2**32)
        else:
            self.set("cycle_done", True)
            self.set("cycle_progress", 1.0)
            self.set("parts_good", (self.get("parts_good") + 1) % 2**32)

    def _estop(self) -> None:
        if self.get("cycle_busy"):
            self._end_cycle(Err.ESTOP)
        self.set("estop_active", True)
        self.set("fault_code", 2)

    def _reset(self) -> None:
        if self.memory.tables[Table.COIL][LAYOUT["estop"][1]]:
            return  # the e-stop is still pressed
        self.set("estop_active", False)
        self.set("faulted", False)
        self.set("fault_code", 0)
        self.set("error_code", 0)
        self._hb_last_change = None  # re-armed by the next heartbeat

    def _fault(self, code: int, error: Err) -> None:
        if self.get("cycle_busy"):
            self._end_cycle(error)
        self.set("faulted", True)
        self.set("fault_code", code)

    def _update_outputs(self) -> None:
        stopped = self.get("estop_active") or self.get("faulted")
        running = not stopped and (
            self.get("conveyor_run") or (self.get("cycle_busy") and not self.get("held"))
        )
        self.set("conveyor_running", running)
        if not self.get("cycle_busy"):
            self.set("clamp_closed", bool(self.get("clamp_close")) and not stopped)
        self.set("door_closed", not self.get("door_open"))
        if self.get("estop_active"):
            state = PlcState.ESTOP
        elif self.get("faulted"):
            state = PlcState.FAULTED
        elif self.get("cycle_busy"):
            state = PlcState.HELD if self.get("held") else PlcState.RUNNING
        elif self.get("cycle_done"):
            state = PlcState.DONE
        else:
            state = PlcState.IDLE
        self.set("plc_state", int(state))

    def step(self, dt_real: float) -> None:
        """Advance the PLC by `dt_real` real seconds."""
        dt = dt_real * self.options.time_factor
        self._uptime += dt
        self.set("uptime", self._uptime)
        wd = self.options.watchdog_s
        if (
            wd
            and self._hb_last_change is not None
            and not self.get("faulted")
            and time.monotonic() - self._hb_last_change > wd
        ):
            self._fault(1, Err.WATCHDOG)
        if self.get("cycle_busy") and not self.get("held"):
            self._cycle_left -= dt
            if self._cycle_left <= 0:
                self._end_cycle(self.error_code or (0 if self.get("part_present") else Err.NO_PART))
            else:
                self.set("cycle_progress", 1 - self._cycle_left / self._cycle_total)
        if self.get("conveyor_running"):
            pos = self.get("conveyor_position") + self.get("conveyor_speed") * dt
            self.set("conveyor_position", math.fmod(pos, 1e6))
        self._update_outputs()

    async def _tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.step(now - last)
            last = now
            async with self._changed:
                self._changed.notify_all()
