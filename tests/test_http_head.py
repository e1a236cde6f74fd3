"""The request-head parser (sans-I/O)."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomd.ws import MAX_HEADERS, BadRequest, parse_head


def test_upgrade_request() -> None:
    head = (
        b"GET /ws?user=al%20ice&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nX-A: 1\r\nx-a:  2 "
    )
    r = parse_head(head, b"\x81\x80")
    assert r.method == "GET" and r.path == "/ws" and r.query == {"user": "al ice", "x": "1"}
    assert r.upgrade and r.trailing == b"\x81\x80"
    assert r.header("x-a") == "1, 2" and r.header("upgrade") == "websocket"


def test_plain_request_keeps_no_trailing_bytes() -> None:
    r = parse_head(b"GET /health HTTP/1.0\r\nHost: h", b"junk")
    assert not r.upgrade and r.trailing == b"" and r.path == "/health"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /ws HTTP/2.0",
        b"GET /ws",
        b"GET  /ws HTTP/1.1",
        b"G(T /ws HTTP/1.1",
        b"GET ws HTTP/1.1",
        b"GET /w\x01s HTTP/1.1",
        b"GET / HTTP/1.1\r\nNo-Colon",
        b"GET / HTTP/1.1\r\n Folded: x",
        b"GET / HTTP/1.1\r\nBad Name: x",
        b"GET / HTTP/1.1\r\nX: a\x00b",
        b"GET / HTTP/1.1" + b"\r\nX: y" * (MAX_HEADERS + 1),
    ],
)
def test_malformed_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_raises_only_bad_request(head: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_head(head)


def test_host_is_required_once_in_http_1_1() -> None:
    with pytest.raises(BadRequest, match="no Host"):
        parse_head(b"GET / HTTP/1.1\r\nX: y")
    with pytest.raises(BadRequest, match="no Host"):
        parse_head(b"GET / HTTP/1.1\r\nHost: ")
    with pytest.raises(BadRequest, match="more than one Host"):
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b")
    assert parse_head(b"GET / HTTP/1.0").version == "HTTP/1.0"
    assert parse_head(b"GET / HTTP/1.1\r\nHost: a").version == "HTTP/1.1"


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"GET\n /ws HTTP/1.1\r\nHost: h", "malformed request line"),
        (b"GET /ws HTTP/1.1\r\nHost\n: h", "malformed header field"),
        (b"GET /ws HTTP/1.1\r\nHost: h\nX: y", "control characters"),
        (b"GET /ws HTTP/1.1\r\nHost: h\rX: y", "control characters"),
    ],
)
def test_a_lone_line_break_is_refused_where_it_stands(head: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse_head(head)


_NAME = st.text("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits, min_size=1, max_size=12)
# A value as sent: no control character but tab, and neither spaces nor tabs at its ends.
_VALUE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.just("\t"),
    max_size=20,
).map(lambda v: v.strip(" \t"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_NAME, _VALUE, st.sampled_from(["", " ", "\t", "  \t"])), max_size=8),
    st.sampled_from(["/", "/ws?user=a%20b&x=1", "/health#frag", "/\u00e9"]),
)
def test_well_formed_fields_are_read_back(fields: list[tuple[str, str, str]], target: str) -> None:
    """Each field's value comes back as sent, whatever spaces and tabs surround it, repeated
    fields joined; the path and query are the target's."""
    lines = [f"GET {target} HTTP/1.0"] + [f"{n}:{pad}{v}{pad}" for n, v, pad in fields]
    r = parse_head("\r\n".join(lines).encode("latin-1"))
    expected: dict[str, str] = {}
    for name, value, _ in fields:
        key = name.lower()
        expected[key] = f"{expected[key]}, {value}" if key in expected else value
    assert r.headers == expected
    assert r.path == target.partition("#")[0].partition("?")[0].replace("\u00e9", "\ufffd")
    assert r.query == ({"user": "a b", "x": "1"} if "?" in target else {})
