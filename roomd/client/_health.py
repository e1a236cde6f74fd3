"""``GET /health`` of a roomd node: what the multi-server client validates a server with.

A deliberately small HTTP/1.1 client (h11 over a Trio stream): one request, ``Connection: close``,
a bounded body.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import attrs
import h11
import orjson
import trio

from .._version import __version__
from ..protocol import SUPPORTED_VERSIONS
from ._core import http_url
from ._errors import InvalidServer
from ._target import Target

MAX_HEALTH_BYTES: Final = 64 * 1024
DEFAULT_HEALTH_TIMEOUT: Final = 5.0


@attrs.frozen
class Health:
    """What a node says about itself."""

    name: str
    status: str  # "ok" or "draining"
    version: str
    protocol: int
    uptime: float
    connections: int
    users: int
    rooms: int


_FIELDS: Final[dict[str, tuple[type[Any], ...]]] = {
    "name": (str,),
    "status": (str,),
    "version": (str,),
    "protocol": (int,),
    "uptime": (int, float),
    "connections": (int,),
    "users": (int,),
    "rooms": (int,),
}


def parse_health(url: str, status: int, body: bytes) -> Health:
    """Check a ``/health`` answer; :class:`InvalidServer` says what is wrong with it."""
    if status != 200:
        raise InvalidServer(url, f"GET /health answered HTTP {status}: not a roomd node")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidServer(url, "GET /health did not answer JSON: not a roomd node") from None
    if not isinstance(data, dict):
        raise InvalidServer(url, "GET /health did not answer a JSON object: not a roomd node")
    missing = [k for k, kinds in _FIELDS.items() if type(data.get(k)) not in kinds]
    if missing:
        raise InvalidServer(
            url, f"GET /health lacks roomd fields ({', '.join(missing)}): not a roomd node"
        )
    if data["protocol"] not in SUPPORTED_VERSIONS:
        ours = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise InvalidServer(
            url, f"the node speaks protocol version {data['protocol']}; this client speaks {ours}"
        )
    return Health(**{k: data[k] for k in _FIELDS})


async def fetch_health(
    url: str,
    *,
    timeout: float = DEFAULT_HEALTH_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> Health:
    """``GET /health`` on the node behind ``url`` (``ws://``, ``wss://``, ``http(s)://``).

    Error handling: raises only :class:`InvalidServer`, whose message says whether the node
    could not be reached, did not speak HTTP, or is not a roomd node of a supported version.
    """
    try:
        target = Target.from_url(http_url(url, "/health"), ssl_context)
    except ValueError as exc:
        raise InvalidServer(url, str(exc)) from None
    try:
        with trio.fail_after(timeout):
            status, body = await _get(target)
    except trio.TooSlowError:
        raise InvalidServer(url, f"no answer to GET /health within {timeout:g} s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise InvalidServer(url, f"cannot reach it: {exc}") from None
    except h11.ProtocolError as exc:
        raise InvalidServer(url, f"does not speak HTTP/1.1 ({exc}): not a roomd node") from None
    return parse_health(url, status, body)


async def _get(target: Target) -> tuple[int, bytes]:
    stream = await target.connect()
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target="/health",
            headers=[
                ("Host", target.host_header),
                ("Accept", "application/json"),
                ("Connection", "close"),
                ("User-Agent", f"roomd-client/{__version__}"),
            ],
        )
        await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(16 * 1024)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_HEALTH_BYTES:
                    raise h11.RemoteProtocolError("health answer too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)
