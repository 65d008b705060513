"""The four read answers, coded in one call each; registered with pymodbus on both ends.

pymodbus packs and unpacks an answer's registers one `struct` call at a time
and builds the text of every answer for a debug log line whether or not it is
logged: about 11 µs for 60 registers against 0.5 µs for one. Merged reads
carry many registers, so that cost grew with exactly what merging saves.
These subclasses code the same bytes in one call and keep their text short.
The driver registers them with its client (`READ_ANSWERS`); the simulated PLC
answers with them (`READ_REQUESTS`), as a real PLC takes no longer to send
60 registers than one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

# Byte value → its eight bits, least significant first (the Modbus bit order).
_BITS = tuple(tuple(bool(b >> i & 1) for i in range(8)) for b in range(256))


@lru_cache(maxsize=128)
def _unpack_words(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _byte_count(pdu: ModbusPDU, data: bytes) -> int:
    n = data[0] if data else 0
    if not data or n >= len(data):
        raise ModbusIOException(
            f"byte count {n} but {max(len(data) - 1, 0)} data bytes",
            function_code=pdu.function_code,
        )
    return n


def _registers(pdu: ModbusPDU, data: bytes) -> list[int]:
    n = _byte_count(pdu, data)
    if n % 2:
        raise ModbusIOException(
            f"odd byte count {n} for registers", function_code=pdu.function_code
        )
    return list(_unpack_words(n // 2).unpack_from(data, 1))


def _pack_registers(registers: Sequence[int]) -> bytes:
    n = len(registers)
    return bytes((2 * n,)) + _unpack_words(n).pack(*registers)


def _pack_bits(bits: Sequence[bool]) -> bytes:
    packed = bytearray((len(bits) + 7) // 8 + 1)
    packed[0] = len(packed) - 1
    for i, bit in enumerate(bits):
        if bit:
            packed[1 + (i >> 3)] |= 1 << (i & 7)
    return bytes(packed)


def _bits(pdu: ModbusPDU, data: bytes) -> list[bool]:
    n = _byte_count(pdu, data)
    return [bit for byte in data[1 : 1 + n] for bit in _BITS[byte]]


def _text(pdu: ModbusPDU, what: str, count: int) -> str:
    return (
        f"{type(pdu).__name__}(dev_id={pdu.dev_id}, "
        f"transaction_id={pdu.transaction_id}, {count} {what})"
    )


class HoldingRegisters(ReadHoldingRegistersResponse):
    def encode(self) -> bytes:
        return _pack_registers(self.registers)

    def decode(self, data: bytes) -> None:
        self.registers = _registers(self, data)

    def __str__(self) -> str:
        return _text(self, "registers", len(self.registers))


class InputRegisters(ReadInputRegistersResponse):
    def encode(self) -> bytes:
        return _pack_registers(self.registers)

    def decode(self, data: bytes) -> None:
        self.registers = _registers(self, data)

    def __str__(self) -> str:
        return _text(self, "registers", len(self.registers))


class Coils(ReadCoilsResponse):
    def encode(self) -> bytes:
        return _pack_bits(self.bits)

    def decode(self, data: bytes) -> None:
        self.bits = _bits(self, data)

    def __str__(self) -> str:
        return _text(self, "bits", len(self.bits))


class DiscreteInputs(ReadDiscreteInputsResponse):
    def encode(self) -> bytes:
        return _pack_bits(self.bits)

    def decode(self, data: bytes) -> None:
        self.bits = _bits(self, data)

    def __str__(self) -> str:
        return _text(self, "bits", len(self.bits))


async def _answer(
    request: ModbusPDU, context: ModbusServerContext, device_id: int, answer: type[ModbusPDU]
) -> ModbusPDU:
    values = await context.async_getValues(
        device_id, request.function_code, request.address, request.count
    )
    if isinstance(values, ExcCodes):
        return ExceptionResponse(request.function_code, values)
    if answer in (Coils, DiscreteInputs):
        bits = cast(list[bool], values)
        return answer(dev_id=device_id, transaction_id=request.transaction_id, bits=bits)
    return answer(dev_id=device_id, transaction_id=request.transaction_id, registers=values)


class _ReadCoils(ReadCoilsRequest):
    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        return await _answer(self, context, device_id, Coils)


class _ReadDiscreteInputs(ReadDiscreteInputsRequest):
    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        return await _answer(self, context, device_id, DiscreteInputs)


class _ReadHoldingRegisters(ReadHoldingRegistersRequest):
    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        return await _answer(self, context, device_id, HoldingRegisters)


class _ReadInputRegisters(ReadInputRegistersRequest):
    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        return await _answer(self, context, device_id, InputRegisters)


READ_REQUESTS: tuple[type[ModbusPDU], ...] = (
    _ReadCoils,
    _ReadDiscreteInputs,
    _ReadHoldingRegisters,
    _ReadInputRegisters,
)
READ_ANSWERS: tuple[type[ModbusPDU], ...] = (
    Coils,
    DiscreteInputs,
    HoldingRegisters,
    InputRegisters,
)
