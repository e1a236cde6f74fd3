"""The web files every node serves: the chat app at /, roomd.js and its declarations."""

from __future__ import annotations

import trio

from roomd import Node
from roomd.web import web_routes
from roomd.web._static import content_type


async def fetch(
    port: int, path: str, *headers: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request: (status, headers with lower-case names, body)."""
    request = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request.encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in fields.items()}, body


def test_routes_cover_the_app_and_the_library() -> None:
    routes = web_routes()
    assert {"/", "/roomd.js", "/roomd.d.ts", "/app/main.js", "/app/app.css"} <= set(routes)
    assert {"/admin", "/app/admin.js", "/app/admin-view.js", "/app/admin.css"} <= set(routes)
    assert "/app/admin.html" not in routes and "/app/index.html" not in routes
    assert all(path == "/" or path.count("/") <= 2 for path in routes)


async def test_page_is_served_with_its_policy(node: Node) -> None:
    status, headers, body = await fetch(node.port or 0, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert b'<script type="module" src="/app/main.js">' in body
    assert int(headers["content-length"]) == len(body)


async def test_operator_view_is_served_with_the_same_policy(node: Node) -> None:
    status, headers, body = await fetch(node.port or 0, "/admin")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert b'<script type="module" src="/app/admin.js">' in body


async def test_library_and_declarations(node: Node) -> None:
    status, headers, body = await fetch(node.port or 0, "/roomd.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"export class RoomdClient" in body
    status, headers, body = await fetch(node.port or 0, "/roomd.d.ts")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    assert b"export declare class RoomdClient" in body
    status, headers, _ = await fetch(node.port or 0, "/app/app.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"


async def test_revalidation_answers_not_modified(node: Node) -> None:
    _, headers, body = await fetch(node.port or 0, "/roomd.js")
    etag = headers["etag"]
    status, again, rest = await fetch(node.port or 0, "/roomd.js", f'If-None-Match: W/{etag}, "x"')
    assert status == 304 and rest == b""
    assert again["etag"] == etag and int(again["content-length"]) == len(body)
    status, _, _ = await fetch(node.port or 0, "/roomd.js", 'If-None-Match: "other"')
    assert status == 200


async def test_head_has_no_body(node: Node) -> None:
    status, headers, body = await fetch(node.port or 0, "/app/main.js", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000


async def test_unknown_files_and_methods(node: Node) -> None:
    assert (await fetch(node.port or 0, "/app/nothing.js"))[0] == 404
    assert (await fetch(node.port or 0, "/app/"))[0] == 404
    assert (await fetch(node.port or 0, "/", method="POST"))[0] == 405


async def test_health_may_be_read_from_other_origins(node: Node) -> None:
    """The app's server list validates other nodes through their /health (a cross-origin read)."""
    status, headers, _ = await fetch(node.port or 0, "/health", "Origin: http://127.0.0.1:1")
    assert status == 200 and headers["access-control-allow-origin"] == "*"


def test_content_types() -> None:
    assert content_type("roomd.d.ts").startswith("text/plain")
    assert content_type("x.js").startswith("text/javascript")
    try:
        content_type("x.exe")
    except ValueError as exc:
        assert "x.exe" in str(exc)
    else:
        raise AssertionError("no error for an unknown suffix")
