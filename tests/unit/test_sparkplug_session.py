"""The edge node's rules as pure logic (cellctl.telemetry.sparkplug.session)."""

from __future__ import annotations

import itertools
from pathlib import Path

from cellctl.model import Quality
from cellctl.telemetry.sparkplug.bdseq import BdSeqStore
from cellctl.telemetry.sparkplug.catalog import MetricDef
from cellctl.telemetry.sparkplug.payload import DataType, Payload
from cellctl.telemetry.sparkplug.session import Change, EdgeNode
from cellctl.telemetry.sparkplug.writes import allowed, value_for

TEMP = MetricDef("temp", DataType.DOUBLE, "degC")


def born_node(history_max: int = 0) -> EdgeNode:
    node = EdgeNode("g", "e", history_max)
    node.will(7)
    node.nbirth({})
    node.define("d1", [TEMP])
    node.dbirth("d1")
    return node


def seq_of(raw: bytes) -> int:
    return int(Payload.FromString(raw).seq)


def test_seq_runs_0_to_255_then_0_across_kinds_and_nbirth_restarts_it() -> None:
    node = born_node()  # NBIRTH 0, DBIRTH 1
    seqs = []
    for i in range(300):
        out = node.data("d1", node.update("d1", [Change("temp", float(i), i)]))
        assert out is not None
        seqs.append(seq_of(out.payload))
    assert seqs[:3] == [2, 3, 4] and seqs[253] == 255 and seqs[254] == 0
    assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs))
    death = node.ddeath("d1")
    assert death is not None and seq_of(death.payload) == (seqs[-1] + 1) % 256
    assert seq_of(node.nbirth({}).payload) == 0


def test_rebirth_keeps_bdseq_and_aliases_and_ndeath_has_no_seq() -> None:
    node = born_node()
    alias = node.alias("d1", "temp")
    again = Payload.FromString(node.nbirth({}).payload)
    bd = next(m for m in again.metrics if m.name == "bdSeq")
    assert bd.long_value == 7 and bd.datatype == DataType.INT64
    dbirth = Payload.FromString(node.dbirth("d1").payload)
    assert [m.alias for m in dbirth.metrics if m.name == "temp"] == [alias]
    death = Payload.FromString(node.ndeath().payload)
    assert not death.HasField("seq") and death.metrics[0].long_value == 7
    will = node.will(256 + 3)
    assert node.bdseq == 3
    # The will is the NDEATH the node would send now; both carry the time they were made.
    assert untimed(will.payload) == untimed(node._ndeath().payload)


def untimed(raw: bytes) -> Payload:
    p = Payload.FromString(raw)
    p.ClearField("timestamp")
    for m in p.metrics:
        m.ClearField("timestamp")
    return p


def test_report_by_exception_and_quality() -> None:
    node = born_node()
    assert node.update("d1", [Change("temp", 1.0, 1)]) != []
    assert node.update("d1", [Change("temp", 1.0, 2)]) == []  # unchanged: not sent
    bad = node.update("d1", [Change("temp", 1.0, 3, Quality.BAD)])
    m = Payload.FromString(node.data("d1", bad).payload).metrics[0]  # type: ignore[union-attr]
    assert list(m.properties.keys) == ["Quality"] and m.properties.values[0].int_value == 0
    good = node.update("d1", [Change("temp", 1.0, 4)])
    m = Payload.FromString(node.data("d1", good).payload).metrics[0]  # type: ignore[union-attr]
    assert m.properties.values[0].int_value == 192  # good again is said once
    assert node.update("d1", [Change("nope", 1, 5)]) == [] and node.stats.unknown_dropped == 1


def test_history_is_bounded_and_forwarded_in_order_as_historical() -> None:
    node = born_node(history_max=3)
    node.lost()
    assert node.data("d1", [Change("temp", 9.0, 1)]) is None  # not born: nothing to send
    for i in range(5):
        node.keep("d1", node.update("d1", [Change("temp", float(i), i)]))
    assert node.stats.history_dropped == 2
    node.nbirth({})
    node.dbirth("d1")
    sent = [Payload.FromString(o.payload).metrics[0] for o in node.forward()]
    assert [m.double_value for m in sent] == [2.0, 3.0, 4.0]
    assert all(m.is_historical for m in sent)


def test_bdseq_persists_and_wraps(tmp_path: Path) -> None:
    store = BdSeqStore(tmp_path)
    assert [store.next(), store.next()] == [0, 1]
    assert BdSeqStore(tmp_path).next() == 2  # a restart goes on
    (tmp_path / "sparkplug-bdseq").write_text("255\n")
    assert BdSeqStore(tmp_path).next() == 0
    (tmp_path / "sparkplug-bdseq").write_text("garbage")
    assert BdSeqStore(tmp_path).next() == 0


def test_a_dcmd_value_must_fit_the_tags_datatype() -> None:
    def metric(field: str, v: object) -> Payload.Metric:
        m = Payload.Metric(name="x")
        setattr(m, field, v)
        return m

    assert value_for(metric("double_value", 2.5), DataType.DOUBLE) == 2.5
    assert value_for(metric("long_value", 7), DataType.DOUBLE) == 7.0
    assert value_for(metric("double_value", float("nan")), DataType.DOUBLE) is None
    assert value_for(metric("long_value", (1 << 64) - 3), DataType.INT64) == -3
    assert value_for(metric("int_value", (1 << 32) - 1), DataType.INT32) == -1
    assert value_for(metric("double_value", 1.0), DataType.INT64) is None
    assert value_for(metric("boolean_value", True), DataType.BOOLEAN) is True
    assert value_for(metric("string_value", "1"), DataType.BOOLEAN) is None
    assert value_for(metric("string_value", "abc"), DataType.STRING) == "abc"
    assert value_for(Payload.Metric(name="x", is_null=True), DataType.STRING) is None
    assert allowed(["plc/recipe_*"], "plc", "recipe_no") and not allowed([], "plc", "x")
