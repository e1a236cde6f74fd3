"""Plain HTTP on the WebSocket port."""

from __future__ import annotations

import orjson
import trio

from roomd import Node
from tests.support import connect
from tests.test_auth import raw_http


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def test_health_reports_node_state(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "alice"), connect(node, "bob"):
            await a.ok("room.join", {"room": "r"})
            status, body = await raw_http(node.port or 0, get("/health"))
    health = orjson.loads(body)
    assert status == 200
    assert health["name"] == "test" and health["status"] == "ok"
    assert health["connections"] == 3 and health["users"] == 2 and health["rooms"] == 1
    assert health["version"] and health["uptime"] >= 0 and health["protocol"] == 1


async def test_metrics_count_traffic(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            await a.ws.send_message("garbage")
            await a.expect("error")
            await a.ok("users.online", {})
            status, body = await raw_http(node.port or 0, get("/metrics"))
    text = body.decode()
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(lines["roomd_open_connections"]) == 1
    assert float(lines["roomd_frames_in_total"]) == 3  # hello, garbage, users.online
    assert float(lines["roomd_frames_out_total"]) == 3  # welcome, error, ack
    assert float(lines['roomd_errors_total{code="bad_frame"}']) == 1
    assert float(lines["roomd_bytes_in_total"]) > 0
    assert float(lines["roomd_dropped_total"]) == 0
    assert float(lines["roomd_reads_paused_total"]) == 0
    assert 0 <= float(lines["roomd_loop_lag_seconds"]) < 5  # (the largest of the last 10 s)
    assert float(lines["roomd_loop_stalls_total"]) == 0


async def test_metrics_count_close_codes(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            await a.ws.send_message("x" * (node.config.limits.max_frame_bytes + 1))
            assert (await a.closed())[0] == 1009
        _, body = await raw_http(node.port or 0, get("/metrics"))
    lines = dict(line.rsplit(" ", 1) for line in body.decode().splitlines() if line[0] != "#")
    assert float(lines['roomd_closes_total{code="1009"}']) == 1


async def test_unknown_paths_and_methods(node: Node) -> None:
    port = node.port or 0
    with trio.fail_after(5):
        assert (await raw_http(port, get("/nope")))[0] == 404
        assert (await raw_http(port, get("/ws")))[0] == 426
        post = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert (await raw_http(port, post))[0] == 405
