"""Plain HTTP on the node's port: ``/health``, ``/metrics``, ``POST /drain``, the web app and
the application's routes, and the separate metrics address (``metrics.port``) when one is
configured.

Who may see what: the room names of ``/health`` (in cluster mode) only an operator (the
``access.admin_token``, or a token with the ``operator`` claim); ``/metrics`` only with the
``metrics.token`` when one is set. Only an operator may drain the node (in development mode,
anyone).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from .._config import Config
from ..io import read_request, send_all
from ..web import web_routes
from ..ws import BadRequest, HttpRequest, json_response, response
from ._access import Gate, bearer, token_matches
from ._admission import Admission, Refusal
from ._auth import Authenticator, AuthError
from ._stats import Stats

Route = Callable[[HttpRequest], bytes]


class HttpFront:
    """The node's answers to plain HTTP requests (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        stats: Stats,
        gate: Gate,
        authenticator: Authenticator,
        health: Callable[[bool], dict[str, Any]],
        registry: CollectorRegistry,
        drain: Callable[[], bool],
        name: str,
    ) -> None:
        self._config = config
        self._stats = stats
        self._gate = gate
        self._authenticator = authenticator
        self._health = health
        self._registry = registry
        self._drain = drain
        self._name = name
        self.routes: dict[str, Route] = {"/health": self._health_route, **web_routes()}
        if config.metrics.port is None:
            self.routes["/metrics"] = self.metrics

    def answer(self, request: HttpRequest) -> bytes:
        """The response to a request that is not a WebSocket upgrade."""
        self._stats.http_requests += 1
        if request.path == "/ws":
            return json_response(426, {"error": "WebSocket upgrade expected"})
        if request.path == "/drain":
            return self._drain_route(request)
        route = self.routes.get(request.path)
        if route is None:
            return json_response(404, {"error": "not found"})  # (the path is not echoed)
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "method not allowed"}, (("Allow", "GET"),))
        return route(request)

    def metrics(self, request: HttpRequest) -> bytes:
        expected = self._config.metrics.token
        if expected is not None and not token_matches(bearer(request), expected):
            challenge = (("WWW-Authenticate", 'Bearer realm="roomd-metrics"'),)
            return json_response(401, {"error": "metrics token required"}, challenge)
        body = generate_latest(self._registry)
        return response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def is_operator(self, request: HttpRequest) -> bool:
        """A request from an operator: the admin token, or a token with the claim."""
        token = bearer(request)
        if self._gate.dev or token_matches(token, self._config.access.admin_token):
            return True
        try:
            return token is not None and self._gate.is_operator(
                self._authenticator.verify(token).claims
            )
        except AuthError:
            return False

    def _health_route(self, request: HttpRequest) -> bytes:
        # Readable from other origins: the web app checks the other servers it is given.
        cors = (("Access-Control-Allow-Origin", "*"),)
        return json_response(200, self._health(self.is_operator(request)), cors)

    def _drain_route(self, request: HttpRequest) -> bytes:
        """``POST /drain``: an operator drains the node (202; 200 if it drains already)."""
        if request.method != "POST":
            return json_response(405, {"error": "method not allowed"}, (("Allow", "POST"),))
        if not self.is_operator(request):
            self._stats.rejected["401"] += 1
            return json_response(401, {"error": "an operator token is required"})
        started = self._drain()
        body = {"name": self._name, "draining": True, "started": started}
        return json_response(202 if started else 200, body)

    async def serve_metrics(self, sock: socket.socket, peer: str, admission: Admission) -> None:
        """One connection to the separate metrics address: ``GET /metrics`` and nothing else.

        Resource handling: the socket is closed before this returns.
        """
        ticket = admission.enter(peer)
        try:
            if isinstance(ticket, Refusal):
                reply = ticket.reply
            else:
                reply = json_response(404, {"error": "not found"})
                with trio.move_on_after(self._config.limits.handshake_timeout):
                    try:
                        request = await read_request(sock)
                        if request.path == "/metrics" and request.method in ("GET", "HEAD"):
                            reply = self.metrics(request)
                    except BadRequest as exc:
                        reply = json_response(400, {"error": str(exc)})
            with trio.move_on_after(1.0), contextlib.suppress(OSError):
                await send_all(sock, reply)
        finally:
            if not isinstance(ticket, Refusal):
                admission.leave(ticket)
            trio.lowlevel.notify_closing(sock)
            sock.close()
