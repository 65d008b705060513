"""Read merging: the planner's request count is the true minimum under the gap and count
limits (checked against an exhaustive dynamic programme), and the server sees exactly it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from cellctl_drivers.modbus.driver import ModbusDriver
from cellctl_drivers.modbus.options import MAX_BITS, MAX_REGISTERS, ModbusOptions, Table
from cellctl_drivers.modbus.plan import Span, plan_table
from cellctl_drivers.modbus.sim import PlcSim, PlcSimOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl.driver import DriverContext


def optimum(spans: list[Span], max_gap: int, max_count: int) -> int:
    """Fewest requests, by trying every way to cut the address-sorted tags into runs."""
    ordered = sorted(spans, key=lambda s: (s.address, s.end))

    @functools.cache
    def best(i: int) -> int:
        if i == len(ordered):
            return 0
        result = len(ordered) + 1
        start, end = ordered[i].address, ordered[i].end
        for j in range(i, len(ordered)):
            if j > i:
                if ordered[j].address - end > max_gap:
                    break
                end = max(end, ordered[j].end)
            if end - start > max_count:
                break
            result = min(result, 1 + best(j + 1))
        return result

    return best(0)


def _check_plan(spans: list[Span], max_gap: int, max_count: int) -> int:
    reads = plan_table(spans, max_gap, max_count)
    covered = {s.name for r in reads for s in r.spans}
    assert covered == {s.name for s in spans}, "every tag is read"
    for r in reads:
        assert 1 <= r.count <= max_count
        for s in r.spans:
            assert r.address <= s.address and s.end <= r.address + r.count, "tag inside its read"
        inner = sorted(r.spans, key=lambda s: s.address)
        reach = inner[0].end
        for s in inner[1:]:
            assert s.address - reach <= max_gap, "no gap above the limit inside a read"
            reach = max(reach, s.end)
    assert len(reads) == optimum(spans, max_gap, max_count)
    return len(reads)


@settings(max_examples=150, deadline=None)
@given(
    layout=st.lists(st.tuples(st.integers(0, 600), st.sampled_from([1, 1, 2, 4, 8])), max_size=25),
    max_gap=st.integers(0, 20),
    max_count=st.integers(8, 125),
)
def test_plan_is_minimal_and_within_limits(
    layout: list[tuple[int, int]], max_gap: int, max_count: int
) -> None:
    spans = [Span(f"t{i}", Table.HOLDING, a, n) for i, (a, n) in enumerate(layout)]
    _check_plan(spans, max_gap, max_count)


def test_protocol_limits_are_never_exceeded() -> None:
    regs = [Span(f"r{i}", Table.HOLDING, i * 2, 2) for i in range(300)]
    reads = plan_table(regs, 10, MAX_REGISTERS)
    assert max(r.count for r in reads) <= 125
    bits = [Span(f"b{i}", Table.COIL, i, 1) for i in range(5000)]
    reads = plan_table(bits, 10, MAX_BITS)
    assert max(r.count for r in reads) <= 2000
    assert len(reads) == 3


# --- against the server: the requests it sees for one poll are the planned ones ----------

# A realistic scattered map: status words, a float block, counters far apart, a recipe string.
SCATTERED = [
    ("status", 0, "uint16"),
    ("mode", 1, "uint16"),
    ("alarm_word", 4, "uint16"),
    ("speed", 10, "float32"),
    ("torque", 12, "float32"),
    ("temp", 20, "int16"),
    ("pressure", 23, "float32"),
    ("count_a", 100, "uint32"),
    ("count_b", 104, "uint32"),
    ("count_c", 130, "uint32"),
    ("energy", 200, "float64"),
    ("recipe", 300, "string"),
    ("far", 500, "uint16"),
]


def _scattered(max_gap: int, max_count: int) -> ModbusOptions:
    tags: dict[str, Any] = {}
    for name, address, dtype in SCATTERED:
        tags[name] = {"table": "input", "address": address, "type": dtype}
        if dtype == "string":
            tags[name]["length"] = 20
    tags.update(
        {f"coil{i}": {"table": "coil", "address": a} for i, a in enumerate((0, 3, 40, 41, 900))}
    )
    return ModbusOptions.model_validate(
        {"tags": tags, "max_gap": max_gap, "max_count": max_count, "max_bits_gap": 16}
    )


@pytest.mark.parametrize("max_gap,max_count", [(0, 125), (3, 125), (10, 125), (40, 30), (125, 125)])
async def test_server_sees_the_minimal_number_of_requests(max_gap: int, max_count: int) -> None:
    options = _scattered(max_gap, max_count)
    register_spans = [
        Span(n, t.table, t.address, t.size) for n, t in options.tags.items() if not t.table.is_bits
    ]
    bit_spans = [
        Span(n, t.table, t.address, t.size) for n, t in options.tags.items() if t.table.is_bits
    ]
    expected = optimum(register_spans, max_gap, max_count) + optimum(bit_spans, 16, MAX_BITS)
    async with PlcSim(PlcSimOptions(strict_map=False)) as sim:
        driver = ModbusDriver(DriverContext("plc", endpoint=sim.endpoint), options)
        async with driver:
            before = sim.request_total
            values = await driver.read_group("default")
            seen = sim.request_total - before
    assert set(values) == set(options.tags)
    assert seen == expected
    assert seen == len(driver.group_reads["default"])
    for fc, _address, count in sim.request_log:
        assert count <= (2000 if fc in (1, 2) else 125)


def test_more_gap_never_needs_more_requests() -> None:
    counts = []
    for gap in (0, 3, 10, 40, 125):
        o = _scattered(gap, 125)
        counts.append(sum(1 for _ in ModbusDriver(DriverContext("x"), o).group_reads["default"]))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]
