"""Serving the web files shipped in this package: the chat app at ``/``, the operator view at
``/admin``, ``/roomd.js``, ``/roomd.d.ts`` and the pages' own files under ``/app/``.

Each file is read once (package data, through :mod:`importlib.resources`) and answered from
memory with its content type, ``X-Content-Type-Options: nosniff``, an ``ETag`` and
``Cache-Control: no-cache`` (a browser revalidates and gets ``304 Not Modified`` while the node
serves the same bytes). The pages also carry a Content Security Policy: their scripts and
styles come from the node only; they may connect to other nodes (WebSocket, ``/health``) and
show images from any http(s) URL, as chat messages carry them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from importlib import resources
from typing import Final

import attrs

from ..ws import HttpRequest, response

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".d.ts": "text/plain; charset=utf-8",  # declarations to read or download, never to run
}
CACHE_CONTROL: Final = "no-cache"  # revalidate each time: the URLs carry no version
PAGE_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: http: https:",
        "connect-src 'self' ws: wss: http: https:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
PAGE_HEADERS: Final = (("Content-Security-Policy", PAGE_POLICY), ("Referrer-Policy", "no-referrer"))
APP_DIR: Final = "app"
TOP_FILES: Final = {"/roomd.js": "roomd.js", "/roomd.d.ts": "roomd.d.ts"}
PAGES: Final = {"index.html": "/", "admin.html": "/admin"}  # app files served as pages


def content_type(name: str) -> str:
    """The content type of a served file, from its name. Raises ``ValueError`` for others."""
    for suffix in sorted(CONTENT_TYPES, key=len, reverse=True):
        if name.endswith(suffix):
            return CONTENT_TYPES[suffix]
    raise ValueError(f"no content type for {name!r}: add its suffix to CONTENT_TYPES")


@attrs.frozen
class StaticFile:
    """One file answered from memory: a route handler (``HttpRequest -> response bytes``)."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    etag: str = attrs.field(init=False)

    @etag.default
    def _etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    def __call__(self, request: HttpRequest) -> bytes:
        headers = (("ETag", self.etag), ("X-Content-Type-Options", "nosniff"), *self.headers)
        status = 304 if self.etag in _etags(request.header("if-none-match")) else 200
        full = response(status, self.body, self.content_type, headers, cache_control=CACHE_CONTROL)
        if status == 304 or request.method == "HEAD":
            # The head alone, with the Content-Length of the full answer (RFC 9110, 9.3.2, 15.4.5).
            return full[: len(full) - len(self.body)]
        return full


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@functools.cache
def _files() -> dict[str, StaticFile]:
    root = resources.files(__package__)
    files: dict[str, StaticFile] = {}
    for path, name in TOP_FILES.items():
        files[path] = StaticFile(root.joinpath(name).read_bytes(), content_type(name))
    app = root.joinpath(APP_DIR)
    for entry in sorted(app.iterdir(), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            body = entry.read_bytes()
            page = PAGES.get(entry.name)
            if page is not None:
                files[page] = StaticFile(body, content_type(entry.name), PAGE_HEADERS)
            else:
                files[f"/{APP_DIR}/{entry.name}"] = StaticFile(body, content_type(entry.name))
    for name, page in PAGES.items():
        if page not in files:
            raise FileNotFoundError(f"roomd.web: {APP_DIR}/{name} is missing from the package")
    return files


def web_routes() -> dict[str, Callable[[HttpRequest], bytes]]:
    """The web files by path, as node routes: ``node.route(path, handler)`` for each."""
    return dict(_files())
