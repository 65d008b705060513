"""The driver's read answers code exactly the bytes pymodbus's own classes do."""

from __future__ import annotations

import pytest
from cellctl_drivers.modbus.answers import Coils, DiscreteInputs, HoldingRegisters, InputRegisters
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

registers = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)
bits = st.lists(st.booleans(), min_size=1, max_size=2000)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (HoldingRegisters, ReadHoldingRegistersResponse),
        (InputRegisters, ReadInputRegistersResponse),
    ],
)
@given(values=registers)
def test_registers_match_pymodbus(ours: type, theirs: type, values: list[int]) -> None:
    data = theirs(registers=values).encode()
    assert ours(registers=values).encode() == data
    mine = ours()
    mine.decode(data)
    assert mine.registers == values
    assert ours.function_code == theirs.function_code


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(Coils, ReadCoilsResponse), (DiscreteInputs, ReadDiscreteInputsResponse)],
)
@given(values=bits)
def test_bits_match_pymodbus(ours: type, theirs: type, values: list[bool]) -> None:
    data = theirs(bits=values).encode()
    assert ours(bits=values).encode() == data
    mine, reference = ours(), theirs()
    mine.decode(data)
    reference.decode(data)
    assert mine.bits == reference.bits  # whole bytes: the padding bits too
    assert mine.bits[: len(values)] == values


@pytest.mark.parametrize("data", [b"", b"\x04\x00\x01", b"\x02"])
def test_a_byte_count_beyond_the_data_is_refused(data: bytes) -> None:
    with pytest.raises(ModbusIOException, match="byte count"):
        HoldingRegisters().decode(data)
    with pytest.raises(ModbusIOException, match="byte count"):
        Coils().decode(data)


def test_text_is_short() -> None:
    answer = HoldingRegisters(registers=list(range(125)), dev_id=3, transaction_id=9)
    assert str(answer) == "HoldingRegisters(dev_id=3, transaction_id=9, 125 registers)"


def test_registers_come_in_whole_words() -> None:
    with pytest.raises(ModbusIOException, match="odd byte count 3"):
        HoldingRegisters().decode(b"\x03\x00\x01\x02")
