"""roomd bench: the pure parts (statistics, the client WebSocket codec, merging drivers'
answers) and one end-to-end smoke run with tiny sizes (no timing asserts)."""

from __future__ import annotations

import io
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from roomd.bench import _bus, _cost, _plots, _procs, _profile, _progress, _report, _stats, _ws
from roomd.bench._run import _exact
from roomd.bench._workloads import (
    DEFAULT_WORKLOADS,
    X10_WORKLOADS,
    Settings,
    fd_shortfall,
    merge_phase,
)
from roomd.cluster import _wire
from roomd.io._zmq import make_context

# Statistics -------------------------------------------------------------------------------------


def test_receipts_count_received_duplicates_and_missing() -> None:
    r = _stats.Receipts(5)
    assert [r.mark(i) for i in (0, 3, 3, 4, 0)] == [True, True, False, True, False]
    assert (r.received, r.duplicates, r.missing) == (3, 2, 2)
    assert r.missing_indexes() == [1, 2]
    assert r.has(3) and not r.has(1)
    with pytest.raises(IndexError):
        r.mark(5)


def test_receipts_missing_indexes_is_bounded() -> None:
    r = _stats.Receipts(100)
    assert r.missing_indexes(3) == [0, 1, 2]
    for i in range(100):
        r.mark(i)
    assert r.missing_indexes() == [] and r.missing == 0


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert _stats.percentile(values, 50) == 50
    assert _stats.percentile(values, 99) == 99
    assert _stats.percentile(values, 100) == 100
    assert _stats.percentile(values, 0) == 1
    assert _stats.percentile([7], 99) == 7
    assert _stats.percentile([1, 2, 3], 50) == 2
    assert math.isnan(_stats.percentile([], 50))
    with pytest.raises(ValueError):
        _stats.percentile(values, 101)


def test_summary_in_milliseconds() -> None:
    summary = _stats.Summary.of_ns([3_000_000, 1_000_000, 2_000_000])
    assert (summary.count, summary.p50, summary.max, summary.mean) == (3, 2.0, 3.0, 2.0)
    assert summary.as_dict()["p99"] == 3.0
    empty = _stats.Summary.of_ns([])
    assert empty.count == 0 and empty.as_dict()["p50"] is None


def test_merging_per_message_arrays() -> None:
    assert _stats.merge_min([[0, 5, 9], [3, 0, 7]]) == [3, 5, 7]
    assert _stats.merge_max([[0, 5, 9], [3, 0, 7]]) == [3, 5, 9]
    assert _stats.merge_min([]) == []
    with pytest.raises(ValueError):
        _stats.merge_max([[1], [1, 2]])
    assert _stats.per_message_latencies([10, 20, 0], [15, 0, 40]) == [5]


def test_rate_and_median() -> None:
    assert _stats.rate(1000, 0, 500_000_000) == 2000.0
    assert _stats.rate(5, 10, 10) == 0.0
    assert _stats.median([3.0, 1.0, 2.0]) == 2.0
    assert _stats.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert math.isnan(_stats.median([]))


def test_merge_phase_sums_drivers_and_merges_messages() -> None:
    ms = 1_000_000  # times in the answers are nanoseconds
    base: dict[str, Any] = {"timed_out": False, "duplicates": 0, "unexpected": 0, "stray": 0}
    base |= {"missing_receivers": 0, "lost_examples": [], "errors": {}, "closes": {}}
    sender = base | {
        "sent": 2, "sent_ns": [100 * ms, 200 * ms], "expected": 2, "received": 2,
        "latencies": [10 * ms, 30 * ms], "first": [110 * ms, 230 * ms],
        "last": [110 * ms, 230 * ms],
    }  # fmt: skip
    receiver = base | {
        "sent": 0, "sent_ns": [0, 0], "expected": 2, "received": 1, "duplicates": 1,
        "latencies": [50 * ms], "first": [150 * ms, 0], "last": [150 * ms, 0],
        "lost_examples": ["r1: [1]"],
    }  # fmt: skip
    merged = merge_phase([sender, receiver])
    assert (merged["sent"], merged["expected"], merged["received"]) == (2, 4, 3)
    assert (merged["lost"], merged["duplicates"], merged["undelivered_messages"]) == (1, 1, 0)
    latency = merged["latency_ms"]
    assert latency["all"]["count"] == 3 and latency["all"]["max"] == 50.0
    assert (latency["first"]["count"], latency["first"]["max"]) == (2, 30.0)  # 230 - 200
    assert latency["last"]["max"] == 50.0  # 150 - 100
    assert merged["deliveries_per_s"] == pytest.approx(3 / 0.130, abs=0.1)
    assert merged["duration_s"] == 0.13
    assert merged["lost_examples"] == ["r1: [1]"]


def test_default_sizes_are_the_issues() -> None:
    assert Settings().default_sizes()
    assert Settings(drivers=2, workloads=["w1-rate"]).default_sizes()
    assert not Settings(receivers=10).default_sizes()
    assert Settings(bus_messages=10, bus_window=0).default_sizes()  # no target for the bus


def test_profile_ranks_self_and_inclusive_time() -> None:
    stacks = _profile.parse_collapsed(
        ["main (a.py);run (b.py);send (z.py) 6\n", "main (a.py);run (b.py) 3\n", "bad line\n",
         "main (a.py);parse (c.py) 1\n"]
    )  # fmt: skip
    top = _profile.top_functions(stacks, limit=3)
    assert top["samples"] == 10
    assert top["self"] == [("send (z.py)", 60.0), ("run (b.py)", 30.0), ("parse (c.py)", 10.0)]
    assert top["inclusive"][:2] == [("main (a.py)", 100.0), ("run (b.py)", 90.0)]
    assert _profile.top_functions([])["samples"] == 0


def _burst(rate: float, lost: int = 0) -> dict[str, Any]:
    latency = {"p50": 1.0, "p99": 2.0, "max": 3.0}
    return {
        "deliveries_per_s": rate, "lost": lost, "duplicates": 0, "timed_out": False,
        "latency_ms": {"all": latency, "first": latency, "last": latency},
        "cpu_s": {"nodes": 1.0, "broker": 0.1, "drivers": 0.5},
        "cost": {"server_cpu_s": 1.1, "us_per_delivery": 1e6 / rate, "us_per_message": 2200.0,
                 "driver_us_per_delivery": 2.0},
    }  # fmt: skip


def test_medians_take_the_middle_and_the_worst_loss() -> None:
    w3 = {"opened_per_s": 3500.0, "rss_per_connection_kb": 7.0, "alive_after_hold": 10}
    w3["all_alive"] = True
    documents = [
        {"results": {"w1-burst": _burst(100_000.0), "w3-idle": w3}},
        {"results": {"w1-burst": _burst(150_000.0, lost=2), "w3-idle": w3}},
        {"results": {"w1-burst": _burst(130_000.0), "w3-idle": w3}},
    ]
    table = _report.medians(documents)
    assert table["w1-burst"]["deliveries_per_s"] == 130_000.0
    assert table["w1-burst"]["cost"]["us_per_delivery"] == round(1e6 / 130_000, 3)
    assert len(table["w1-burst"]["cost_values"]["us_per_delivery"]) == 3
    assert table["w1-burst"]["lost"] == 2
    assert table["w1-burst"]["target"]["met"] is False  # a run lost messages
    assert table["w3-idle"]["target"]["met"] is True
    text = _report.render_medians(table, documents)
    assert "medians of 3 runs" in text and "130,000" in text
    assert "server cost" in text and "7.69" in text  # us per delivery at 130,000/s


def test_cdf_keeps_the_distribution_in_a_fixed_number_of_points() -> None:
    ordered = sorted(i * 10_000 for i in range(1, 100_001))  # 0.01 .. 1,000 ms
    cdf = _stats.cdf_ms(ordered)
    assert len(cdf) == len(_stats.CDF_QUANTILES)
    points = dict((q, ms) for q, ms in cdf)
    assert (points[0], points[50], points[99], points[100]) == (0.01, 500.0, 990.0, 1000.0)
    assert [ms for _, ms in cdf] == sorted(ms for _, ms in cdf)
    assert _stats.cdf_ms([]) == []


def test_phase_cost_per_delivery_and_per_message() -> None:
    result = {"received": 250_000, "sent": 500}
    result["cpu_s"] = {"nodes": 0.6, "broker": 0.05, "drivers": 0.5}
    cost = _cost.phase_cost(result)
    assert cost["server_cpu_s"] == 0.65
    assert cost["us_per_delivery"] == 2.6 and cost["us_per_message"] == 1300.0
    assert cost["driver_us_per_delivery"] == 2.0
    unknown = _cost.phase_cost(result | {"cpu_s": {"nodes": None, "broker": None}})
    assert unknown["us_per_delivery"] is None and unknown["server_cpu_s"] is None
    assert _cost.phase_cost(result | {"received": 0, "sent": 0})["us_per_delivery"] is None


def test_idle_cost_and_scaling_against_the_base_size() -> None:
    cost = _cost.idle_cost(5000, {"nodes": 2.5, "broker": 0.5}, {"nodes": 0.3, "broker": 0.0},
                           30.0, 7.5)  # fmt: skip
    assert cost["ms_per_connection"] == 0.6 and cost["idle_cpu_pct"] == 1.0
    assert cost["idle_us_per_connection_s"] == 2.0 and cost["kib_per_connection"] == 7.5
    results: dict[str, Any] = {
        "w1-burst": {"size": 500, "size_unit": "receivers", "cost": {"us_per_delivery": 2.0}},
        "w1-burst-x10": {"size": 5000, "cost": {"us_per_delivery": 3.0}},
        "w2-burst": {"size": 100, "cost": {"us_per_message": 50.0}},  # no x10: no row
        "w3-idle": {"size": 5000, "cost": cost},
        "w3-idle-x10": {"size": 20_000, "cost": cost | {"ms_per_connection": None}},
    }
    rows = _cost.scaling(results)
    assert [(r["workload"], r["figure"]) for r in rows] == [
        ("w1-burst", "us_per_delivery"),
        ("w3-idle", "ms_per_connection"),
        ("w3-idle", "idle_us_per_connection_s"),
        ("w3-idle", "kib_per_connection"),
    ]
    assert (rows[0]["base_size"], rows[0]["x10_size"], rows[0]["ratio"]) == (500, 5000, 1.5)
    assert rows[1]["ratio"] is None and rows[3]["ratio"] == 1.0
    assert rows[0]["exact"]  # neither says otherwise
    results["w1-burst-x10"] |= {"lost": 3, "timed_out": True}
    results["w3-idle"] |= {"all_alive": True}
    assert [r["exact"] for r in _cost.scaling(results)] == [False, True, True, True]
    text = "\n".join(_report._scaling_lines(_cost.scaling(results)))
    assert "w1-burst *" in text and "* a run of this workload lost" in text


def test_fd_shortfall_says_what_to_do() -> None:
    assert fd_shortfall(100, 1, 5) is None
    message = fd_shortfall(10**9, 1, 5)
    assert message is not None and "file-descriptor limit" in message
    assert "--drivers" in message


def test_progress_off_a_terminal_is_a_line_per_phase_start_and_end() -> None:
    stream = io.StringIO()
    progress = _progress.Progress(stream)
    assert not progress.tty and progress.counters(2) == [None, None]
    progress.note("w1: opening 501 connections")  # between phases: nothing
    progress.begin("w1-rate")
    progress.end("w1-rate", "10/10 delivered")
    progress.begin("w3-idle", "handshakes", "50 connections")
    progress.end("w3-idle", "50/50 opened")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in stream.getvalue()
    assert lines[0] == "w1-rate: started" and lines[2] == "w3-idle: started (50 connections)"
    assert re.fullmatch(r"w1-rate: done in \d+\.\d s: 10/10 delivered", lines[1])


def test_progress_on_a_terminal_counts_what_the_drivers_publish() -> None:
    stream = io.StringIO()
    progress = _progress.Progress(stream, tty=True)
    where = progress.counters(2)
    progress.begin("w1-burst")
    cells = [_progress.Cell(w) for w in where if w is not None]
    cells[0].offer(10, 1500)
    cells[0].offer(11, 9999)  # not due yet: not published
    cells[1].write(500)
    assert progress.status() is not None and "2,000 deliveries" in (progress.status() or "")
    progress.end("w1-burst", "2,000/2,000 delivered")
    for cell in cells:
        cell.close()
    path = Path(str(where[0][0]))  # type: ignore[index]
    assert path.exists()
    progress.close()
    assert not path.exists()
    text = stream.getvalue()
    assert "\r\x1b[Kw1-burst" in text and "w1-burst: done in" in text


def _svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_plots_are_svg_with_the_workloads_in_them() -> None:
    run = {"received": 100, "latency_cdf_ms": _stats.cdf_ms([i * 50_000 for i in range(1, 101)])}
    texts = _svg_texts(_plots.latency_svg("w1-rate", [run, run]))
    assert any("w1-rate" in t for t in texts) and "run 2" in texts
    row = {"workload": "w1-burst", "unit": "us per delivery", "size_unit": "receivers",
           "base_size": 500, "x10_size": 5000, "base": 2.0, "x10": 3.0, "ratio": 1.5}  # fmt: skip
    texts = _svg_texts(_plots.scaling_svg([row, row | {"x10": None, "ratio": None}]))
    assert any("w1-burst" in t and "1.50" in t for t in texts)
    assert _plots.Axis("x", 1, 1000, log=True).ticks()[:4] == [1, 2, 5, 10]
    assert _plots.Axis("y", 0, 100).ticks() == [0, 20, 40, 60, 80, 100]


# The bus workload -------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32])
def test_bus_sequence_number_is_read_where_the_codec_put_it(seq: int) -> None:
    messages = _bus.build(1, 150)
    body = [b"x", False, ["u1"]]
    message = _wire.encode(_bus.TOPIC, _wire.Kind.USERS, _bus.SENDER, _bus.EPOCH, seq, body)
    assert message.startswith(messages.prefix)
    assert _bus.seq_at(message, len(messages.prefix)) == _wire.decode(message).seq == seq
    assert _bus.seq_at(messages.prefix, len(messages.prefix)) == -1  # too short
    assert _bus.seq_at(messages.prefix + b"\xc0", len(messages.prefix)) == -1  # not a uint


def test_bus_messages_are_users_pushes_of_the_size_asked() -> None:
    built = _bus.build(300, 150)
    assert len(built.messages) == 300
    for seq in (0, 299):
        envelope = _wire.decode(built.messages[seq])
        assert (envelope.topic, envelope.kind, envelope.seq) == (_bus.TOPIC, "users", seq)
        assert abs(len(built.messages[seq]) - len(_bus.TOPIC) - 150) <= 3
    assert 150 <= built.mean_bytes - len(_bus.TOPIC) <= 153


def test_bus_tally_counts_strays_duplicates_and_unexpected() -> None:
    built = _bus.build(5, 100)
    tally = _bus.Tally(4, built.prefix)
    tally.take([built.messages[0], _bus.PROBE, built.messages[0], built.messages[4]], 10)
    tally.take([built.messages[3]], 20)
    assert (tally.receipts.received, tally.receipts.duplicates) == (2, 1)
    assert (tally.stray, tally.unexpected, tally.batches) == (1, 1, 2)
    assert (tally.first_ns, tally.last_ns) == (10, 20)
    tally.take([built.messages[3]], 30)  # nothing new: the last arrival stays
    assert tally.last_ns == 20


async def test_bus_ends_count_every_message_of_a_direct_run() -> None:
    """The publisher's and the subscriber's commands, in one process (the smoke test below
    runs them as two processes, through the broker)."""
    size = {"messages": 3000, "bytes": 150}
    with make_context() as ctx:
        async with trio.open_nursery() as nursery:
            pub, sub = _bus.BusEnd(ctx, nursery), _bus.BusEnd(ctx, nursery)
            opened = await pub.handle({"cmd": "pub", "path": "direct"} | size)
            subscribing = {"cmd": "sub", "endpoint": opened["endpoint"], "acks": opened["acks"]}
            assert (await sub.handle(subscribing)) == {}
            for _ in range(500):
                await pub.handle({"cmd": "probe"})
                if (await sub.handle({"cmd": "probed", "wait": 0.02}))["arrived"]:
                    break
            else:
                pytest.fail("no probe came through")
            await sub.handle({"cmd": "arm", "ack_every": 50} | size)
            publish = {"cmd": "publish", "checkpoint": 256, "timeout": 10, "quiet": 2}
            sent = await pub.handle(publish | {"window": 500})  # the window has to move
            assert (sent["sent"], sent["refused"], sent["timed_out"]) == (3000, 0, False)
            command = {"cmd": "collect", "sent": 3000, "quiet": 2, "grace": 0.05, "timeout": 10}
            got = await sub.handle(command)
            assert (got["received"], got["lost"], got["duplicates"]) == (3000, 0, 0)
            assert (got["unexpected"], got["timed_out"]) == (0, False)
            assert got["last_ns"] >= got["first_ns"] > 0
            assert (await sub.handle({"cmd": "collect"}))["error"].startswith("KeyError")
            await pub.handle({"cmd": "close"})
            await sub.handle({"cmd": "close"})
            assert "error" in await pub.handle({"cmd": "probe"})  # no socket any more
            nursery.cancel_scope.cancel()


async def test_bus_publisher_gives_up_when_nothing_is_acknowledged() -> None:
    with make_context() as ctx:
        async with trio.open_nursery() as nursery:
            pub = _bus.BusEnd(ctx, nursery)
            await pub.handle({"cmd": "pub", "path": "direct", "messages": 1000, "bytes": 50})
            publish = {"cmd": "publish", "checkpoint": 64, "window": 100, "quiet": 0.05}
            sent = await pub.handle(publish | {"timeout": 10})
            assert (sent["sent"], sent["stalled"], sent["timed_out"]) == (100, True, True)
            await pub.handle({"cmd": "close"})
            nursery.cancel_scope.cancel()


def _bus_result(rate: float, lost: int = 0) -> dict[str, Any]:
    path = {"messages_per_s": rate, "lost": lost, "duplicates": 0, "timed_out": False}
    path["cpu_s"] = {"broker": 0.2, "pub": 0.4, "sub": 0.3, "nodes": 0.0}
    paths = {"broker": path, "direct": path | {"messages_per_s": 2 * rate}}
    return {"lost": 2 * lost, "duplicates": 0, "timed_out": False, "paths": paths}


def test_bus_medians_and_skipped_runs() -> None:
    documents = [{"results": {"bus": _bus_result(r, lost)}} for r, lost in
                 ((200_000.0, 0), (100_000.0, 3), (300_000.0, 0))]  # fmt: skip
    table = _report.medians(documents)
    bus = table["bus"]
    assert bus["messages_per_s"] == 200_000.0 and bus["lost"] == 6
    assert bus["paths"]["direct"]["messages_per_s"] == 400_000.0
    assert bus["paths"]["broker"]["lost"] == 3 and "target" not in bus
    text = _report.render_medians(table, documents)
    assert "200,000" in text and "400,000" in text and "targets" not in text
    skipped = {"skipped": "with --urls the broker's endpoints are not known"}
    assert _exact(skipped) and not _exact({"error": "x"}) and not _exact(_bus_result(1.0, 1))
    assert _report.medians([{"results": {"bus": skipped}}])["bus"] == skipped
    results = {"bus": dict(skipped)}
    _report.add_verdicts(results)
    meta = {"nodes": 2, "local": False, "drivers": 1, "cpus": 2, "load_start": [0.0],
            "load_end": [0.0], "command": "roomd bench", "started": "now",
            "default_sizes": True}  # fmt: skip
    text = _report.render({"run": meta, "results": results})
    assert "bus: skipped: with --urls" in text and "targets" not in text


# The client WebSocket codec -----------------------------------------------------------------------


def _server() -> Connection:
    """A wsproto server past its handshake, to check frames against."""
    return Connection(ConnectionType.SERVER)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70_000])
def test_client_frames_are_what_a_server_reads(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    server = _server()
    server.receive_data(_ws.client_frame(payload, _ws.OP_BINARY))
    events = list(server.events())
    assert len(events) == 1 and isinstance(events[0], BytesMessage)
    assert events[0].data == payload


def test_text_and_close_frames() -> None:
    server = _server()
    server.receive_data(_ws.client_frame(b'{"type":"hello"}') + _ws.close_frame(4001, "bye"))
    events = list(server.events())
    assert isinstance(events[0], TextMessage) and events[0].data == '{"type":"hello"}'
    assert isinstance(events[1], CloseConnection) and events[1].code == 4001
    assert events[1].reason == "bye"


def test_mask_is_an_involution() -> None:
    key = b"\x01\x02\x03\x04"
    data = b"hello, world"
    assert _ws.mask(_ws.mask(data, key), key) == data
    assert _ws.mask(b"", key) == b""


def test_frame_reader_splits_server_frames_at_any_boundary() -> None:
    server = _server()
    stream = (
        server.send(TextMessage(data="a" * 10))
        + server.send(TextMessage(data="b" * 300))
        + server.send(BytesMessage(data=b"c" * 70_000))
        + server.send(Ping(payload=b"p"))
    )
    for step in (1, 3, 127, 4096, len(stream)):
        reader = _ws.FrameReader()
        out: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), step):
            out += reader.feed(stream[i : i + step])
        assert out == [
            (_ws.OP_TEXT, b"a" * 10),
            (_ws.OP_TEXT, b"b" * 300),
            (_ws.OP_BINARY, b"c" * 70_000),
            (_ws.OP_PING, b"p"),
        ]


def test_frame_reader_joins_fragments_and_passes_control_frames() -> None:
    server = _server()
    stream = (
        server.send(TextMessage(data="ab", message_finished=False))
        + server.send(Ping(payload=b""))
        + server.send(TextMessage(data="cd", message_finished=True))
    )
    assert _ws.FrameReader().feed(stream) == [(_ws.OP_PING, b""), (_ws.OP_TEXT, b"abcd")]


def test_frame_reader_refuses_masked_frames() -> None:
    with pytest.raises(_ws.ServerProtocolError):
        _ws.FrameReader().feed(_ws.client_frame(b"x"))


def test_upgrade_handshake_checks() -> None:
    key = _ws.new_key()
    request = _ws.upgrade_request("127.0.0.1", 9000, "/ws?user=a", key)
    assert request.startswith(b"GET /ws?user=a HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n")
    good = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + _ws.accept_for(key)
    _ws.check_upgrade_response(good, key)
    with pytest.raises(_ws.HandshakeFailed, match="401"):
        _ws.check_upgrade_response(b"HTTP/1.1 401 Unauthorized\r\nX: y", key)
    with pytest.raises(_ws.HandshakeFailed, match="Accept"):
        _ws.check_upgrade_response(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope", key)
    # RFC 6455's own example
    assert _ws.accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# The driver process -----------------------------------------------------------------------------


async def test_a_driver_serves_its_connections_between_commands(start_node: Any) -> None:
    """A driver waiting for its next command still answers the node's pings, and pings do
    not count as traffic when it waits for quiet: so a phase that keeps another driver busy
    for longer than the node's heartbeat timeout closes none of its connections."""
    node = await start_node(heartbeat={"interval": 0.1, "timeout": 0.5})
    target = ["d-1", "127.0.0.1", node.port, "lobby", None]
    with trio.fail_after(30):
        async with _procs.drivers(1) as (driver,):
            opened = await driver.request(
                {"cmd": "open", "targets": [target], "concurrency": 1, "timeout": 10}, 15
            )
            assert opened["opened"] == 1, opened
            # Pinged every heartbeat interval, the connection is quiet all the same.
            settled = await driver.request({"cmd": "settle", "quiet": 0.5, "max": 10.0}, 15)
            assert settled["quiet"] is True, settled
            await trio.sleep(3 * 0.5)  # no command for three heartbeat timeouts
            answer = await driver.request({"cmd": "ping", "prefix": "d-", "timeout": 5}, 10)
            assert (answer["asked"], answer["answered"]) == (1, 1), answer
            assert answer["closes"] == {}, answer


# End to end ------------------------------------------------------------------------------------


async def _bench(args: list[str], out: Path, limit: float) -> tuple[str, str, dict[str, Any]]:
    """Run ``roomd bench ARGS --json OUT`` within ``limit`` seconds: its report, its stderr and
    its JSON (a failure of the command fails the test with both outputs)."""
    argv = [sys.executable, "-m", "roomd.cli", "bench", *args, "--json", str(out)]
    with trio.fail_after(limit):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    report, errors = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, report + errors
    return report, errors, json.loads(await trio.Path(out).read_text())


@pytest.mark.cluster
async def test_bench_smoke(tmp_path: Path) -> None:
    """The real tool, tiny sizes: every workload runs and reports exact delivery."""
    args = [
        "--nodes", "2",
        "--receivers", "10", "--messages", "20", "--rate-messages", "10", "--rate", "50",
        "--pairs", "4", "--pair-messages", "5", "--pair-rate", "50", "--pair-burst", "20",
        "--connections", "50", "--hold", "1", "--bus-messages", "2000", "--micro-sends", "300",
        "--timeout", "15",
    ]  # fmt: skip
    report, _, document = await _bench(args, tmp_path / "bench.json", 45)
    assert "w1-burst" in report and "targets" in report
    results = document["results"]
    assert list(results) == list(DEFAULT_WORKLOADS)
    assert document["run"]["nodes"] == 2 and not document["run"]["default_sizes"]
    for name in ("w1-rate", "w1-burst", "w2-rate", "w2-burst"):
        r = results[name]
        assert (r["lost"], r["duplicates"], r["timed_out"]) == (0, 0, False), (name, r)
        assert r["unexpected"] == 0 and r["errors"] == {}
        assert r["received"] == r["expected"] > 0
        assert r["numbered"] == r["received"], (name, r["numbered"])  # reliable pushes: a seq
        assert set(r["latency_ms"]) == {"all", "first", "last"}
        assert r["latency_ms"]["all"]["count"] == r["received"]
        assert set(r["cpu_s"]) >= {"nodes", "broker", "drivers", "per_node"}
        assert r["cpu_s"]["nodes"] is not None and r["cpu_s"]["drivers"] is not None
        assert r["deliveries_per_s"] > 0
        assert "met" in r["target"]
        cost = r["cost"]
        assert cost["server_cpu_s"] > 0 and cost["driver_us_per_delivery"] > 0, (name, cost)
        assert cost["us_per_delivery"] > 0 and cost["us_per_message"] > 0, (name, cost)
    assert results["w1-burst"]["expected"] == 10 * 20
    assert results["w2-burst"]["expected"] == 8 * 20
    w3 = results["w3-idle"]
    assert w3["opened"] == 50 and w3["alive_after_hold"] == 50 and w3["all_alive"]
    assert w3["server_connections"] == 50
    assert w3["teardown"]["server_connections_after"] == 0
    assert w3["rss_per_connection_kb"] is not None
    assert w3["cost"]["ms_per_connection"] > 0 and w3["cost"]["idle_cpu_pct"] > 0
    assert "server cost" in report and "ms of server CPU per connection opened" in report
    bus = results["bus"]
    assert set(bus["paths"]) == {"broker", "direct"}
    for path, r in bus["paths"].items():
        assert (r["sent"], r["received"], r["lost"]) == (2000, 2000, 0), (path, r)
        assert (r["duplicates"], r["unexpected"], r["timed_out"]) == (0, 0, False), (path, r)
        assert r["messages_per_s"] > 0 and r["setup"]["probes"] >= 1
        assert set(r["cpu_s"]) == {"broker", "pub", "sub", "nodes"}
        assert r["cpu_s"]["pub"] is not None and r["cpu_s"]["broker"] is not None
    assert (bus["lost"], bus["duplicates"]) == (0, 0)
    assert "bus path" in report
    micro = results["micro"]
    assert micro["delivered"] > 300 and 0 < micro["decode_us"] < micro["direct_us"]
    # Across three nodes: (100 to warm up + 3 rounds of 100) in bursts, the same one by one.
    assert micro["cluster_delivered"] == 2 * (100 + 3 * 100)
    assert micro["cluster_direct_burst_us"] > 0 and micro["cluster_direct_one_us"] > 0
    # What a node holds: a detached session and a message of history are measured, not zero,
    # and the history measured is the thousand messages sent (a room log keeps 1,000).
    assert micro["detached_session_bytes"] > 200
    assert micro["history_messages"] == 1000
    assert micro["history_entry_bytes"] > micro["history_message_bytes"] > 100
    # This machine's charges: a hop when every thread on the way must be woken costs more than
    # one of a burst, and they are real costs (a ZeroMQ hop is never free).
    assert micro["zmq_hop_one_us"] > micro["zmq_hop_burst_us"] > 0
    assert micro["send_reader_asleep_us"] > 0 and micro["send_reader_awake_us"] > 0
    # What Trio's primitives cost, each measured; waiting on sockets one by one through Trio
    # costs more per socket than reading their readiness from an epoll set of our own.
    trio_costs = [k for k in micro if k.startswith("trio_")]
    assert len(trio_costs) == 6 and all(micro[k] > 0 for k in trio_costs), micro
    assert 0 < micro["epoll_ready_us"] < micro["trio_wait_readable_us"]
    assert "Trio: a checkpoint" in report
    # What a wake-up costs, idle and back to back, from epoll and from Trio (which adds its
    # scheduler's pass to the same epoll_wait), and the same Python after each.
    wake = ("wake_epoll_idle_us", "wake_epoll_busy_us", "wake_trio_idle_us", "wake_trio_busy_us")
    assert all(micro[k] > 0 for k in wake) and micro["python_idle_us"] > 0, micro
    assert micro["wake_trio_idle_us"] > micro["wake_epoll_idle_us"]
    assert "a wake-up after 2 ms asleep" in report
    assert "a detached session" in report


@pytest.mark.cluster
async def test_bench_in_a_mesh_measures_the_nodes_alone(tmp_path: Path) -> None:
    """``--mesh``: the nodes' PUBs bound and connected to one another, no broker process; the
    server's cost is the nodes' (a broker that is not there costs nothing), the bus workload
    (which measures a broker) says why it is skipped, and a broker fault is refused."""
    args = [
        "--mesh", "--nodes", "3", "--workloads", "bus,w1-rate,w2-burst,w3-idle",
        "--receivers", "6", "--rate-messages", "10", "--rate", "50",
        "--pairs", "3", "--pair-burst", "20", "--connections", "30", "--hold", "1",
        "--timeout", "15",
    ]  # fmt: skip
    report, _, document = await _bench(args, tmp_path / "bench.json", 60)
    assert "3 node(s) in a mesh (no broker)" in report
    assert document["run"]["mesh"]
    results = document["results"]
    assert results["bus"] == {"skipped": "a mesh has no broker (the bus workload measures one)"}
    for name in ("w1-rate", "w2-burst"):
        r = results[name]
        assert _exact(r), (name, r)
        assert r["cpu_s"]["broker"] == 0.0 and r["cpu_s"]["nodes"] > 0, (name, r["cpu_s"])
        assert r["cost"]["server_cpu_s"] == round(r["cpu_s"]["nodes"], 3), (name, r["cost"])
    assert results["w3-idle"]["all_alive"] and results["w3-idle"]["cost"]["ms_per_connection"] > 0
    refused = [sys.executable, "-m", "roomd.cli", "bench", "--mesh", "--workloads", "faults"]
    with trio.fail_after(20):
        done = await trio.run_process(refused, capture_stderr=True, check=False)
    assert done.returncode != 0
    assert "a mesh has no broker: fault-broker-kill, fault-broker-stop cannot run" in (
        done.stderr.decode()
    )


@pytest.mark.cluster
async def test_bench_volatile_sends_are_not_numbered(tmp_path: Path) -> None:
    """``--volatile``: W1's and W2's sends ask for volatile pushes, which arrive exactly, with
    no ``seq`` (not numbered in a stream); the report says so and the run is not the one the
    targets are stated for."""
    args = [
        "--volatile", "--nodes", "2", "--workloads", "w1-rate,w1-burst,w2-rate,w2-burst",
        "--receivers", "6", "--messages", "20", "--rate-messages", "10", "--rate", "50",
        "--pairs", "3", "--pair-messages", "5", "--pair-rate", "50", "--pair-burst", "20",
        "--timeout", "15",
    ]  # fmt: skip
    report, _, document = await _bench(args, tmp_path / "bench.json", 60)
    assert "W1 and W2 sending volatile pushes" in report
    assert document["run"]["volatile"] and not document["run"]["default_sizes"]
    for name in ("w1-rate", "w1-burst", "w2-rate", "w2-burst"):
        r = document["results"][name]
        assert (r["lost"], r["duplicates"], r["unexpected"]) == (0, 0, 0), (name, r)
        assert r["received"] == r["expected"] > 0 and r["numbered"] == 0, (name, r)


@pytest.mark.cluster
async def test_bench_x10_plots_and_progress(tmp_path: Path) -> None:
    """The x10 workloads at tiny sizes beside the base ones: the cost of each phase, the
    scaling table, the plots, and a line per phase start and end on stderr (not a terminal)."""
    plots = tmp_path / "plots"
    args = [
        "--nodes", "2", "--workloads", "w1-rate,w1-burst,w2-rate,w2-burst,w3-idle,x10",
        "--receivers", "6", "--messages", "20", "--rate-messages", "10", "--rate", "50",
        "--pairs", "3", "--pair-messages", "5", "--pair-rate", "50", "--pair-burst", "20",
        "--connections", "30", "--hold", "1",
        "--x10-receivers", "18", "--x10-pairs", "9", "--x10-connections", "90",
        "--timeout", "15", "--plots", str(plots),
    ]  # fmt: skip
    report, errors, document = await _bench(args, tmp_path / "bench.json", 60)
    results = document["results"]
    assert set(X10_WORKLOADS) <= set(results)
    for name in X10_WORKLOADS:
        assert _exact(results[name]), (name, results[name])
    assert results["w1-burst-x10"]["expected"] == 18 * 20
    assert results["w2-burst-x10"]["expected"] == 18 * 20
    assert results["w3-idle-x10"]["opened"] == 90
    for name, r in results.items():
        cost = r["cost"]
        if name.startswith("w3-"):
            assert cost["ms_per_connection"] > 0 and cost["idle_cpu_pct"] > 0, (name, cost)
            assert cost["kib_per_connection"] > 0, (name, cost)
        else:
            assert cost["us_per_delivery"] > 0 and cost["us_per_message"] > 0, (name, cost)
    scaling = document["scaling"]
    assert {r["workload"] for r in scaling} == {"w1-rate", "w1-burst", "w2-rate", "w2-burst",
                                                 "w3-idle"}  # fmt: skip
    assert all(r["ratio"] > 0 and r["exact"] for r in scaling), scaling
    w1 = next(r for r in scaling if r["workload"] == "w1-burst")
    assert (w1["base_size"], w1["x10_size"], w1["size_unit"]) == (6, 18, "receivers")
    assert "scaling" in report and "x10 / base" in report
    # Progress off a terminal: each phase's start and end, nothing else but the plots' line.
    lines = errors.splitlines()
    assert lines[-1] == f"plots: 9 SVG file(s) in {plots}"
    phases = [re.fullmatch(r"(\S+): (started.*|done in .*)", line) for line in lines[:-1]]
    assert all(phases), lines
    started = [m.group(1) for m in phases if m and m.group(2).startswith("started")]
    ended = [m.group(1) for m in phases if m and m.group(2).startswith("done")]
    assert sorted(started) == sorted(ended) == sorted(results), lines
    # The plots: valid SVG, one latency plot per W1 and W2 phase, and the scaling.
    files = sorted(p.name for p in plots.iterdir())
    phases_run = [n for n in results if not n.startswith("w3-")]
    assert files == sorted([f"latency-{n}.svg" for n in phases_run] + ["scaling.svg"])
    for name in phases_run:
        texts = _svg_texts((plots / f"latency-{name}.svg").read_text())
        assert any(t.startswith(f"{name}: delivery latency") for t in texts), texts
    texts = _svg_texts((plots / "scaling.svg").read_text())
    assert sum("x10 / base" in t for t in texts) == len(scaling)
