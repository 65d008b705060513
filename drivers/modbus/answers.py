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
from typing import ClassVar, cast

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


class _RegisterCoding(ModbusPDU):
    def encode(self) -> bytes:
        return _pack_registers(self.registers)

    def decode(self, data: bytes) -> None:
        self.registers = _registers(self, data)

    def __str__(self) -> str:
        return _text(self, "registers", len(self.registers))


class _BitCoding(ModbusPDU):
    def encode(self) -> bytes:
        return _pack_bits(self.bits)

    def decode(self, data: bytes) -> None:
        self.bits = _bits(self, data)

    def __str__(self) -> str:
        return _text(self, "bits", len(self.bits))


class HoldingRegisters(_RegisterCoding, ReadHoldingRegistersResponse):
    pass


class InputRegisters(_RegisterCoding, ReadInputRegistersResponse):
    pass


class Coils(_BitCoding, ReadCoilsResponse):
    pass


class DiscreteInputs(_BitCoding, ReadDiscreteInputsResponse):
    pass


class _Answering(ModbusPDU):
    """A read request that the simulated PLC answers with one of the classes above."""

    answer: ClassVar[type[ModbusPDU]]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        values = await context.async_getValues(
            device_id, self.function_code, self.address, self.count
        )
        if isinstance(values, ExcCodes):
            return ExceptionResponse(self.function_code, values)
        if issubclass(self.answer, _BitCoding):
            bits = cast(list[bool], values)
            return self.answer(dev_id=device_id, transaction_id=self.transaction_id, bits=bits)
        return self.answer(dev_id=device_id, transaction_id=self.transaction_id, registers=values)


class _ReadCoils(_Answering, ReadCoilsRequest):
    answer = Coils


class _ReadDiscreteInputs(_Answering, ReadDiscreteInputsRequest):
    answer = DiscreteInputs


class _ReadHoldingRegisters(_Answering, ReadHoldingRegistersRequest):
    answer = HoldingRegisters


class _ReadInputRegisters(_Answering, ReadInputRegistersRequest):
    answer = InputRegisters


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
