"""The demo cell (configs/demo.toml, every driver simulated) as a Sparkplug edge node:
every rule a host relies on, over a run of the real drivers and simulators."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from mqtt_broker import Mosquitto
from spb_host import Host, births_before_data, properties, seq_without_gaps, value

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.model import MetricType

DEMO = Path(__file__).parents[2] / "configs" / "demo.toml"
DATATYPE = {MetricType.BOOL: 11, MetricType.INT: 4, MetricType.FLOAT: 10, MetricType.STRING: 12}
FIELD = {
    3: "int_value",
    4: "long_value",
    10: "double_value",
    11: "boolean_value",
    12: "string_value",
}


async def test_demo_cell_as_an_edge_node(tmp_path: Path, broker: Mosquitto) -> None:
    text = DEMO.read_text()
    text = re.sub(
        r"(?ms)^\[mqtt\].*\Z",
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[mqtt.sparkplug]\ngroup_id = "plant"\n',
        text,
    )
    text = text.replace("[cell]\n", f'[cell]\nstate_dir = "{tmp_path / "state"}"\n', 1)
    (tmp_path / "demo.toml").write_text(text)
    cell = config_mod.load(tmp_path / "demo.toml")
    host = await Host(broker.port).start()
    app = App(cell)
    declared = {}
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            await host.wait(
                lambda: {m.device for m in host.of("DBIRTH")} >= set(cell.devices),
                "a DBIRTH from every device",
                within_s=60,
            )
            await host.wait(lambda: len(host.of("DDATA")) >= 5, "data after the births", 30)
            for dev, runner in app.supervisor.runners.items():
                assert runner.driver is not None
                declared[dev] = list(runner.driver.metrics())
            app.request_stop()
            async with asyncio.timeout(30):
                await task
        await host.wait(lambda: len(host.of("NDEATH")) == 1, "NDEATH on the clean stop")
    finally:
        host.stop()
    msgs = host.messages
    seq_without_gaps(msgs)
    births_before_data(msgs)
    assert value(host.of("NDEATH")[0].metric("bdSeq")) == value(
        host.of("NBIRTH")[0].metric("bdSeq")
    )
    # Every declared metric is in the device's birth, with its datatype and unit.
    for dev, specs in declared.items():
        birth = host.of("DBIRTH", dev)[-1]
        for spec in specs:
            m = birth.metric(spec.name)
            assert m.datatype == DATATYPE[spec.type], spec
            assert properties(m).get("engUnit", "") == spec.unit, spec
    # Every DATA metric is an alias its device's birth named, in that datatype's field.
    births: dict[str | None, dict[int, int]] = {}
    for msg in msgs:
        if msg.kind in ("NBIRTH", "DBIRTH"):
            births[msg.device] = {m.alias: m.datatype for m in msg.payload.metrics if m.alias}
        elif msg.kind in ("NDATA", "DDATA"):
            for m in msg.payload.metrics:
                datatype = births[msg.device][m.alias]
                assert m.is_null or m.WhichOneof("value") == FIELD[datatype], (msg.topic, m)
