"""One table of the simulated PLC: a value at every address, and which addresses are mapped.

A flat list rather than a map of the mapped addresses: a PLC's memory is
flat, and a read is then one slice, so the simulator takes no longer to
answer 120 registers than one, as a real PLC does over TCP.
"""

from __future__ import annotations

from collections.abc import Mapping

ADDRESSES = 65536


class Cells:
    __slots__ = ("_mapped", "_values")

    def __init__(self) -> None:
        self._values = [0] * ADDRESSES
        self._mapped: set[int] = set()

    def define(self, address: int, count: int) -> None:
        self._mapped.update(range(address, address + count))

    def __getitem__(self, address: int) -> int:
        return self._values[address]

    def __setitem__(self, address: int, value: int) -> None:
        """Writing an address maps it (as assigning to a dict's key would)."""
        self._mapped.add(address)
        self._values[address] = value

    def update(self, values: Mapping[int, int]) -> None:
        for address, value in values.items():
            self[address] = value

    def all_mapped(self, address: int, count: int) -> bool:
        mapped = self._mapped
        return all(a in mapped for a in range(address, address + count))

    def block(self, address: int, count: int) -> list[int]:
        """The values of `count` addresses from `address`, mapped or not (unmapped read 0)."""
        return self._values[address : address + count]
