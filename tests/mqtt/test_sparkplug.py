"""The cell as a Sparkplug B edge node, seen by a host (spb_host.py, decoding with classes
built from the spec's field table, not cellctl's) on a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import mqtt_testdev
from mqtt_broker import Mosquitto
from mqtt_rig import Commander, Subscriber, load, running_app, sims, write_config
from spb_host import (
    Host,
    births_before_data,
    encode_cmd,
    encode_values,
    properties,
    seq_without_gaps,
    value,
)

from cellctl import config as config_mod
from cellctl.app import App
from cellctl.model import MetricSpec, MetricType
from cellctl.registry import Registry
from cellctl.telemetry.topics import Topics

SPB = '[mqtt.sparkplug]\ngroup_id = "plant"\nedge_node_id = "cell7"\n'


async def test_births_data_device_loss_rebirth_and_clean_death(
    broker: Mosquitto, tmp_path: Path
) -> None:
    host = await Host(broker.port).start()
    cell = load(write_config(tmp_path / "c.toml", broker.port, devices=2, mqtt_extra=SPB))
    try:
        async with running_app(cell) as app:
            await host.wait(lambda: len(host.of("DBIRTH")) >= 2, "births of both devices")
            nbirth = host.of("NBIRTH")[0]
            assert nbirth.topic == "spBv1.0/plant/NBIRTH/cell7"
            assert nbirth.qos == 0 and not nbirth.retain
            bdseq = value(nbirth.metric("bdSeq"))
            assert nbirth.metric("bdSeq").datatype == 4  # Int64
            assert value(nbirth.metric("Node Control/Rebirth")) is False
            dbirth = host.of("DBIRTH", "d1")[0]
            temp = dbirth.metric("temp")
            assert temp.datatype == 10 and properties(temp)["engUnit"] == "degC"
            assert value(dbirth.metric("PackML/State")) == 4  # Idle
            assert value(dbirth.metric("PackML/StateName")) == "idle"

            # Data on change, by alias; an unchanged value is not sent again.
            d1 = sims(cell)[0]
            d1.sample("temp", 21.5)
            d1.sample("temp", 21.5)
            d1.set_state("execute", "go")
            await host.wait(
                lambda: any(
                    value(m) == 6 for d in host.of("DDATA", "d1") for m in d.payload.metrics
                ),
                "the state change",
            )
            data = host.of("DDATA", "d1")
            temps = [value(m) for d in data for m in d.payload.metrics if m.alias == temp.alias]
            assert temps == [21.5]

            # Link loss: DDEATH, then a new DBIRTH when the device is back.
            for w in list(d1._writers):
                w.close()
            await host.wait(lambda: len(host.of("DDEATH", "d1")) == 1, "DDEATH of d1")
            await host.wait(lambda: len(host.of("DBIRTH", "d1")) == 2, "DBIRTH of d1 again")

            # Rebirth on request: NBIRTH (seq 0, same bdSeq) and every DBIRTH again.
            before = len(host.of("DBIRTH"))
            host.sub.client.publish(
                "spBv1.0/plant/NCMD/cell7", encode_cmd([("Node Control/Rebirth", True)]), qos=1
            )
            await host.wait(lambda: len(host.of("NBIRTH")) == 2, "the rebirth")
            await host.wait(lambda: len(host.of("DBIRTH")) >= before + 2, "DBIRTHs again")
            assert value(host.of("NBIRTH")[1].metric("bdSeq")) == bdseq

            # A DCMD runs the JSON command of that name on the device.
            d2 = sims(cell)[1]
            d2.set_state("execute", "go")
            await host.wait(
                lambda: any(
                    value(m) == 6 for d in host.of("DDATA", "d2") for m in d.payload.metrics
                ),
                "d2 executing",
            )
            host.sub.client.publish(
                "spBv1.0/plant/DCMD/cell7/d2", encode_cmd([("Device Control/Pause", True)]), qos=1
            )
            await host.wait(lambda: any(c == "pause" for c, _ in d2.commands), "pause on d2")
            assert app.sparkplug is not None
        # Clean stop: the node's own NDEATH with the session's bdSeq.
        await host.wait(lambda: len(host.of("NDEATH")) == 1, "NDEATH")
        ndeath = host.of("NDEATH")[0]
        assert value(ndeath.metric("bdSeq")) == bdseq and ndeath.qos == 1
        assert not ndeath.payload.HasField("seq")
        msgs = host.messages
        seq_without_gaps(msgs)
        births_before_data(msgs)
    finally:
        host.stop()


async def test_seq_wraps_after_255_without_gaps(broker: Mosquitto, tmp_path: Path) -> None:
    host = await Host(broker.port).start()
    cell = load(write_config(tmp_path / "c.toml", broker.port, devices=1, mqtt_extra=SPB))
    try:
        async with running_app(cell):
            await host.wait(lambda: len(host.of("DBIRTH")) == 1, "DBIRTH")
            d1 = sims(cell)[0]
            for i in range(300):
                d1.sample("temp", float(i))
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the link write
            await host.wait(
                lambda: any(value(m) == 299.0 for d in host.of("DDATA") for m in d.payload.metrics),
                "the last sample",
            )
        msgs = host.messages
        seqs = [m.seq for m in msgs if m.kind not in ("NDEATH", "STATE", "NCMD", "DCMD")]
        assert 255 in seqs and seqs[seqs.index(255) + 1] == 0
        seq_without_gaps(msgs)
    finally:
        host.stop()


DAEMON_CONFIG = """
[cell]
name = "k9"
state_dir = "state"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_initial_s = 0.1
reconnect_max_s = 1.0
[mqtt.sparkplug]
group_id = "plant"
[access]
allow_anonymous = true
"""


def start_daemon(cfg: Path) -> subprocess.Popen[bytes]:
    log = open(cfg.parent / "daemon.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(cfg)], stdout=log, stderr=log, cwd=cfg.parent
    )


async def test_will_after_sigkill_and_bdseq_after_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(DAEMON_CONFIG.format(port=broker.port))
    host = await Host(broker.port).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_daemon(cfg))
        await host.wait(lambda: len(host.of("NBIRTH")) == 1, "NBIRTH", 30)
        first = value(host.of("NBIRTH")[0].metric("bdSeq"))
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        await host.wait(lambda: len(host.of("NDEATH")) == 1, "the will (NDEATH)", 30)
        will = host.of("NDEATH")[0]
        assert will.topic == "spBv1.0/plant/NDEATH/k9" and will.qos == 1 and not will.retain
        assert value(will.metric("bdSeq")) == first

        procs.append(start_daemon(cfg))
        await host.wait(lambda: len(host.of("NBIRTH")) == 2, "NBIRTH after restart", 30)
        second = value(host.of("NBIRTH")[1].metric("bdSeq"))
        assert second == (first + 1) % 256
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(20) == 0
        await host.wait(lambda: len(host.of("NDEATH")) == 2, "NDEATH on a clean stop", 30)
        assert value(host.of("NDEATH")[1].metric("bdSeq")) == second
        seq_without_gaps(host.messages)
    finally:
        host.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


async def test_primary_host_offline_then_births_then_history_in_order(
    broker: Mosquitto, tmp_path: Path
) -> None:
    extra = SPB + 'primary_host_id = "scada"\n'
    host = await Host(broker.port).start()
    state = "spBv1.0/STATE/scada"

    def say(online: bool, ts: int) -> None:
        body = json.dumps({"online": online, "timestamp": ts}).encode()
        host.sub.client.publish(state, body, qos=1, retain=True)

    cell = load(write_config(tmp_path / "c.toml", broker.port, devices=1, mqtt_extra=extra))
    try:
        async with running_app(cell) as app:
            spb = app.sparkplug
            assert spb is not None
            await asyncio.sleep(0.3)
            assert host.of("NBIRTH") == []  # no host yet: no births
            say(True, 1000)
            await host.wait(lambda: len(host.of("DBIRTH")) == 1, "births once the host is up")
            first = value(host.of("NBIRTH")[0].metric("bdSeq"))
            temp_alias = host.of("DBIRTH")[0].metric("temp").alias

            say(False, 2000)
            await host.wait(lambda: len(host.of("NDEATH")) == 1, "NDEATH for the host")
            assert value(host.of("NDEATH")[0].metric("bdSeq")) == first
            d1 = sims(cell)[0]
            for v in (1.0, 2.0, 3.0):
                d1.sample("temp", v)
            await host.wait(
                lambda: (
                    [c.value for h in spb.node.history for c in h.changes if c.name == "temp"]
                    == [1.0, 2.0, 3.0]
                ),
                "the changes kept",
            )
            await asyncio.sleep(0.3)
            assert len(host.of("NBIRTH")) == 1  # still waiting for the host

            say(True, 3000)
            await host.wait(
                lambda: any(
                    m.is_historical and value(m) == 3.0
                    for d in host.of("DDATA")
                    for m in d.payload.metrics
                ),
                "the kept changes",
            )
            after = host.messages[[m.kind for m in host.messages].index("NDEATH") + 1 :]
            kinds = [m.kind for m in after if m.kind in ("NBIRTH", "DBIRTH", "DDATA")]
            assert kinds[:2] == ["NBIRTH", "DBIRTH"]
            assert value(host.of("NBIRTH")[1].metric("bdSeq")) == (first + 1) % 256
            history = [
                value(m)
                for d in host.of("DDATA")
                for m in d.payload.metrics
                if m.is_historical and m.alias == temp_alias
            ]
            assert history == [1.0, 2.0, 3.0]

            # An older session's offline STATE is ignored: no NDEATH.
            say(False, 500)
            d1.sample("temp", 4.0)
            await host.wait(
                lambda: any(value(m) == 4.0 for d in host.of("DDATA") for m in d.payload.metrics),
                "live data after an old offline STATE",
            )
            assert len(host.of("NDEATH")) == 1
        seq_without_gaps(host.messages)
        births_before_data(host.messages)
    finally:
        host.stop()


class WritableDriver(mqtt_testdev.TestDriver):
    """The test device with two writable tags and a write_tag that records."""

    written: ClassVar[list[tuple[str, str, object]]] = []

    def metrics(self) -> Sequence[MetricSpec]:
        return [
            *super().metrics(),
            MetricSpec("setpoint", MetricType.FLOAT, "mm/s", writable=True),
            MetricSpec("locked", MetricType.FLOAT, writable=True),
        ]

    async def write_tag(self, name: str, value: object) -> None:
        WritableDriver.written.append((self.ctx.device_id, name, value))


async def test_dcmd_writes_only_the_tags_the_config_allows(
    broker: Mosquitto, tmp_path: Path
) -> None:
    registry = Registry(
        extra_drivers={"testdev": WritableDriver}, extra_sims={"testdev": mqtt_testdev.TestSim}
    )
    extra = SPB + 'write_tags = ["d1/setpoint"]\n'
    cell = config_mod.load(
        write_config(tmp_path / "c.toml", broker.port, devices=1, mqtt_extra=extra), registry
    )
    host = await Host(broker.port).start()
    app = App(cell, registry)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(app.run())
            await host.wait(lambda: len(host.of("DBIRTH")) == 1, "DBIRTH")
            birth = host.of("DBIRTH")[0]
            assert properties(birth.metric("setpoint"))["writable"] == "true"
            host.sub.client.publish(
                "spBv1.0/plant/DCMD/cell7/d1",
                encode_values(
                    [
                        ("locked", 10, "double_value", 1.0),  # writable, not allowed
                        ("temp", 10, "double_value", 99.0),  # not writable
                        ("setpoint", 11, "boolean_value", True),  # wrong datatype
                        ("setpoint", 10, "double_value", 12.5),
                    ]
                ),
                qos=1,
            )
            await host.wait(lambda: len(WritableDriver.written) >= 1, "the allowed write")

            def audits() -> list[tuple[str, str]]:
                with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
                    rows = conn.execute(
                        "SELECT outcome, reason FROM command_audit"
                        " WHERE command = 'sparkplug_write' ORDER BY id"
                    )
                    return list(rows)

            await host.wait(lambda: len(audits()) == 4, "four audit rows")
            app.request_stop()
            async with asyncio.timeout(20):
                await task
    finally:
        host.stop()
    assert WritableDriver.written == [("d1", "setpoint", 12.5)]
    outcomes = audits()
    assert sorted(o for o, _ in outcomes) == ["accepted", "rejected", "rejected", "rejected"]
    reasons = " | ".join(r for _, r in outcomes)
    assert "write_tags" in reasons and "not a writable metric" in reasons
    assert "datatype DOUBLE" in reasons


async def test_history_kept_while_the_host_is_away_survives_a_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    extra = SPB + 'primary_host_id = "scada"\n'
    host = await Host(broker.port).start()

    def say(online: bool, ts: int) -> None:
        body = json.dumps({"online": online, "timestamp": ts}).encode()
        host.sub.client.publish("spBv1.0/STATE/scada", body, qos=1, retain=True)

    def rows() -> int:
        with sqlite3.connect(tmp_path / "state" / "cellctl.db") as conn:
            query = "SELECT count(*) FROM sparkplug_history WHERE name = 'temp'"
            return int(conn.execute(query).fetchone()[0])

    say(False, 1000)  # the host is away from the start
    cell = load(write_config(tmp_path / "c.toml", broker.port, devices=1, mqtt_extra=extra))
    try:
        async with running_app(cell):
            for v in (1.0, 2.0):
                sims(cell)[0].sample("temp", v)
            await host.wait(lambda: rows() == 2, "two changes on disk")
        async with running_app(cell):
            sims(cell)[0].sample("temp", 3.0)
            await host.wait(lambda: rows() == 3, "a third change on disk")
            assert host.of("NBIRTH") == []
            say(True, 2000)
            await host.wait(lambda: len(host.of("DBIRTH")) == 1, "births once the host is back")
            alias = host.of("DBIRTH")[0].metric("temp").alias

            def history() -> list[object]:
                return [
                    value(m)
                    for d in host.of("DDATA")
                    for m in d.payload.metrics
                    if m.is_historical and m.alias == alias
                ]

            await host.wait(lambda: 3.0 in history(), "the kept changes, historical")
            assert history() == [1.0, 2.0, 3.0]
            await host.wait(lambda: rows() == 0, "the forwarded history deleted")
        births_before_data(host.messages)
        seq_without_gaps(host.messages)
    finally:
        host.stop()


async def test_job_counts_step_and_progress(broker: Mosquitto, tmp_path: Path) -> None:
    extra = SPB + "node_poll_s = 0.1\n"
    cell = load(write_config(tmp_path / "c.toml", broker.port, devices=1, mqtt_extra=extra))
    host = await Host(broker.port).start()
    sub = await Subscriber(broker.port, [f"{Topics(cell.name).replies('tester')}/#"]).start()
    cmd = Commander(sub, Topics(cell.name))

    def node_values(name: str) -> list[object]:
        aliases = {m.alias for b in host.of("NBIRTH") for m in b.payload.metrics if m.name == name}
        return [value(m) for d in host.of("NDATA") for m in d.payload.metrics if m.alias in aliases]

    def device_values(name: str) -> list[object]:
        births = host.of("DBIRTH", "d1")
        aliases = {m.alias for b in births for m in b.payload.metrics if m.name == name}
        return [
            value(m)
            for d in host.of("DDATA", "d1")
            for m in d.payload.metrics
            if m.alias in aliases
        ]

    try:
        async with running_app(cell):
            await host.wait(lambda: len(host.of("DBIRTH")) == 1, "DBIRTH")
            r = await cmd.send("out_of_service", {"device": "d1", "reason": "test"})
            assert r["outcome"] == "accepted", r
            job = {"job": "j-1", "steps": [{"process": "print", "gcode": "G28\nG1 X10\n"}]}
            assert (await cmd.send("submit", job))["outcome"] == "accepted"
            await host.wait(lambda: 1 in node_values("Cell/QueuedJobs"), "one job queued")
            assert node_values("Cell/OpenJobs")[-1] == 1
            assert (await cmd.send("into_service", {"device": "d1"}))["outcome"] == "accepted"
            await host.wait(lambda: "j-1/0" in device_values("Job/Step"), "the step on d1")
            await host.wait(lambda: 1.0 in device_values("Job/Progress"), "its progress")
            await host.wait(lambda: device_values("Job/Step")[-1] == "", "the step over")
            await host.wait(lambda: node_values("Cell/OpenJobs")[-1:] == [0], "no job open")
            assert node_values("Cell/QueuedJobs")[-1] == 0
        seq_without_gaps(host.messages)
    finally:
        host.stop()
        sub.stop()
