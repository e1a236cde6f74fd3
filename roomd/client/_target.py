"""Where a WebSocket URL leads: host, port, resource, TLS; and opening the TCP stream to it."""

from __future__ import annotations

import ssl
import urllib.parse

import attrs
import trio


@attrs.frozen
class Target:
    host: str
    port: int
    resource: str  # path and query, as sent in the request line
    ssl_context: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str, ssl_context: ssl.SSLContext | None = None) -> Target:
        """Parse a ``ws``/``wss``/``http``/``https`` URL. Error handling: ``ValueError``."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        secure = scheme in ("wss", "https")
        if secure and ssl_context is None:
            ssl_context = ssl.create_default_context()
        port = parts.port if parts.port is not None else (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, resource, ssl_context if secure else None)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (80, 443) else f"{host}:{self.port}"

    async def connect(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        """Open the TCP (and TLS) stream. Error handling: ``OSError``."""
        if self.ssl_context is None:
            return await trio.open_tcp_stream(self.host, self.port)
        return await trio.open_ssl_over_tcp_stream(
            self.host, self.port, ssl_context=self.ssl_context, https_compatible=True
        )
