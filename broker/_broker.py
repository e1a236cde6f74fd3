"""The XSUB/XPUB forwarder between roomd nodes.

Nodes' PUB sockets connect to the frontend (XSUB); nodes' SUB sockets connect to the backend
(XPUB). Subscriptions travel upstream (SUB -> XPUB -> proxy -> XSUB -> PUB), so each PUB only
sends what some node subscribed to: routing is interest-based.

Threads: ``zmq.proxy_steerable`` is a blocking C loop (it releases the GIL), so it runs in its own
thread, which owns nothing but the call; every socket is created, bound and finally closed by the
thread that calls :meth:`Broker.run`. That thread also answers the control endpoint and logs the
statistics. The broker is a plain (non-Trio) process on purpose: it does no async I/O of its own;
the proxy's hot loop is C, and a blocking ``zmq.Poller`` over a handful of sockets is all the rest
needs. (It also means the broker does not import trio or roomd.)

CurveZMQ: given its keys, the broker is the CURVE server of both sockets, and the same thread
answers libzmq's ZAP requests (``_curve.Zap``): only nodes whose public key is in its key
directory may publish (frontend) or subscribe (backend); every connection is encrypted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import socket
import threading
import time
from types import TracebackType
from typing import Final, Self

import attrs
import zmq

from ._curve import BACKEND, FRONTEND, BrokerKeys, Zap
from ._stats import STATISTICS, AuthStats, BrokerStats

__all__ = ["DEFAULT_HWM", "Broker", "BrokerEndpoints"]

log = logging.getLogger("broker")

#: Per-pipe high-water mark of the broker's sockets, in messages. The broker is the one place all
#: traffic goes through, so it gets more room than a node (roomd.io._zmq.DEFAULT_SNDHWM).
DEFAULT_HWM: Final = 100_000
#: TCP keepalive on accepted connections, so a node that vanished without a TCP FIN is dropped
#: (and its subscriptions with it) within about 5 s: probes after 2 s of silence, 1 s apart, 3
#: unanswered. Never ZMTP heartbeats: a node too busy to read its SUB cannot answer them, the
#: broker would drop it, and libzmq then aborts the node (roomd.io._zmq.KEEPALIVE_IDLE_S says
#: more). A node that is frozen or slow keeps its subscriptions; what the broker cannot queue for
#: it (``hwm``) is dropped, and its streams repair the gap.
KEEPALIVE_IDLE_S: Final = 2
KEEPALIVE_INTVL_S: Final = 1
KEEPALIVE_CNT: Final = 3

_TERMINATE: Final = b"TERMINATE"
_PROXY_REPLY_TIMEOUT_MS: Final = 2_000
_THREAD_JOIN_TIMEOUT: Final = 2.0


@attrs.frozen
class BrokerEndpoints:
    """The endpoints actually bound (a ``*`` or ``0`` port is resolved)."""

    frontend: str
    backend: str
    control: str | None


class Broker:
    """An XSUB/XPUB proxy with statistics and a clean stop.

    Usage: ``Broker(frontend, backend, control).run()`` blocks until :meth:`stop` is called (from a
    signal handler or another thread). :meth:`bind` may be called first to learn the bound
    endpoints before running.

    Resource handling:
        The broker owns its ZeroMQ context and sockets from :meth:`bind` (or :meth:`run`) until
        :meth:`run` returns or :meth:`close` is called. Call :meth:`bind`, :meth:`run` and
        :meth:`close` from one thread; :meth:`stop` and :meth:`stats` from any thread.
        A broker runs once.

    Error handling:
        :meth:`bind` raises ``zmq.ZMQError`` if an endpoint cannot be bound (e.g. EADDRINUSE).
        If the proxy thread fails, :meth:`run` stops and re-raises its exception.
    """

    def __init__(
        self,
        frontend: str,
        backend: str,
        control: str | None = None,
        *,
        stats_interval: float = 10.0,
        hwm: int = DEFAULT_HWM,
        keys: BrokerKeys | None = None,
    ) -> None:
        self._config = BrokerEndpoints(frontend, backend, control)
        self._keys = keys  # None: plaintext, anyone may connect
        self._zap: Zap | None = None
        self._stats_interval = stats_interval  # 0 disables the periodic log line
        self._hwm = hwm
        self._endpoints: BrokerEndpoints | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sockets: list[zmq.Socket[bytes]] = []
        self._control: zmq.Socket[bytes] | None = None  # the REP socket on `control`, if any
        self._stopping = False
        self._closed = False
        self._stop_reason = "stop()"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()  # guards the proxy-control client and the stats below
        self._started_at: float | None = None
        self._final: BrokerStats | None = None
        self._proxy_done = threading.Event()
        self._proxy_error: BaseException | None = None

    @property
    def endpoints(self) -> BrokerEndpoints | None:
        """The bound endpoints, once bound."""
        return self._endpoints

    def bind(self) -> BrokerEndpoints:
        """Create and bind the sockets (idempotent); return the endpoints actually bound."""
        if self._closed:
            raise RuntimeError("this broker was closed; a broker runs once")
        if self._endpoints is not None:
            return self._endpoints
        self._ctx = ctx = zmq.Context()
        ctx.setsockopt(zmq.LINGER, 0)
        try:
            if self._keys is not None:
                # Before the sockets bind: libzmq lets anyone in while no ZAP handler is bound.
                self._zap = Zap(ctx, self._keys.directory)
                self._sockets.append(self._zap.socket)
            # The XSUB only sends subscriptions upstream, and libzmq drops those silently at the
            # send HWM (including the full resend to a publisher that (re)connects): unlimited.
            self._frontend = self._socket(zmq.XSUB, sndhwm=0, rcvhwm=self._hwm)
            self._backend = self._socket(zmq.XPUB, sndhwm=self._hwm)
            self._secure(self._frontend, FRONTEND)
            self._secure(self._backend, BACKEND)
            inproc = f"inproc://roomd-broker-control-{id(self):x}"
            self._proxy_control = self._socket(zmq.PAIR)
            self._proxy_control.bind(inproc)
            self._proxy_client = self._socket(zmq.PAIR)
            self._proxy_client.connect(inproc)
            frontend = _bind(self._frontend, self._config.frontend)
            backend = _bind(self._backend, self._config.backend)
            control = None
            if self._config.control is not None:
                self._control = self._socket(zmq.REP)
                control = _bind(self._control, self._config.control)
        except BaseException:
            self.close()
            raise
        self._endpoints = BrokerEndpoints(frontend, backend, control)
        return self._endpoints

    def run(self) -> None:
        """Bind if needed, forward until :meth:`stop`, then shut down and close everything."""
        endpoints = self.bind()
        self._started_at = time.monotonic()
        thread = threading.Thread(target=self._proxy_main, name="broker-proxy", daemon=True)
        thread.start()
        log.info(
            "forwarding: frontend (XSUB) %s, backend (XPUB) %s, control %s",
            endpoints.frontend,
            endpoints.backend,
            endpoints.control or "off",
        )
        if self._keys is None:
            log.warning(
                "insecure: the bus is plaintext and anyone who reaches %s or %s may publish "
                "as any node and read every room",
                endpoints.frontend,
                endpoints.backend,
            )
        else:
            log.info(
                "CurveZMQ: public key %s; the nodes' keys are read from %s",
                self._keys.public.decode(),
                self._keys.directory,
            )
        try:
            self._serve()
        finally:
            self._shutdown(thread)
        if self._proxy_error is not None:
            raise self._proxy_error

    def stop(self, reason: str = "stop()") -> None:
        """Ask :meth:`run` to return. Safe from signal handlers and other threads; idempotent."""
        if not self._stopping:
            self._stop_reason = reason
            self._stopping = True
        self._wake()

    def stats(self) -> BrokerStats:
        """Totals since start: live while running, final after :meth:`run` returned.

        Error handling:
            Raises :exc:`RuntimeError` before :meth:`run`, :exc:`TimeoutError` if the proxy does
            not answer.
        """
        with self._lock:
            if self._final is not None:
                return self._final
            if self._started_at is None or self._proxy_done.is_set():
                raise RuntimeError("the broker is not running")
            return self._query_proxy()

    def close(self) -> None:
        """Release the sockets and the context (done by :meth:`run`; idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self._ctx is not None:
            self._ctx.term()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _socket(self, kind: int, *, sndhwm: int = 1000, rcvhwm: int = 1000) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
        return sock

    def _secure(self, sock: zmq.Socket[bytes], side: str) -> None:
        if self._keys is None:
            return
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._keys.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, side.encode())

    def _auth(self) -> AuthStats:
        if self._zap is None:
            return AuthStats()
        counts = self._zap.counts()
        return AuthStats(
            counts[FRONTEND].accepted,
            counts[FRONTEND].refused,
            counts[BACKEND].accepted,
            counts[BACKEND].refused,
        )

    def _proxy_main(self) -> None:
        # Signals must reach the main thread, whose poll they interrupt.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, self._proxy_control)
        except BaseException as exc:
            self._proxy_error = exc
        finally:
            self._proxy_done.set()
            self._wake()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap.socket, zmq.POLLIN)
        interval = self._stats_interval
        next_report = time.monotonic() + interval if interval > 0 else math.inf
        last = BrokerStats()
        while not self._stopping and not self._proxy_done.is_set():
            wait = next_report - time.monotonic()
            timeout_ms = None if math.isinf(wait) else max(0, math.ceil(wait * 1000))
            ready = dict(poller.poll(timeout_ms))
            if self._wake_r in ready:
                self._drain_wakeups()
            if self._zap is not None and self._zap.socket in ready:
                self._zap.answer()
            if self._control is not None and self._control in ready:
                self._answer_control(self._control)
            if time.monotonic() >= next_report:
                last = self._report(last, interval)
                next_report = max(next_report + interval, time.monotonic())
        if self._proxy_done.is_set() and not self._stopping:
            log.error("the proxy thread stopped: %r", self._proxy_error)
        else:
            log.info("stopping (%s)", self._stop_reason)

    def _answer_control(self, control: zmq.Socket[bytes]) -> None:
        request = control.recv()
        if request == STATISTICS:
            try:
                reply = self.stats().to_json()
            except (RuntimeError, TimeoutError) as exc:
                reply = json.dumps({"error": str(exc)}).encode()
        else:
            reply = json.dumps({"error": "unknown command"}).encode()
        control.send(reply)

    def _report(self, last: BrokerStats, interval: float) -> BrokerStats:
        try:
            now = self.stats()
        except (RuntimeError, TimeoutError) as exc:
            log.warning("no statistics from the proxy: %s", exc)
            return last
        delta = now - last
        log.info(
            "last %g s: in %d msgs / %d B, out %d msgs / %d B, subscriptions %d; "
            "totals: in %d msgs / %d B, out %d msgs / %d B",
            interval,
            delta.frontend.messages_in,
            delta.frontend.bytes_in,
            delta.backend.messages_out,
            delta.backend.bytes_out,
            delta.backend.messages_in,
            now.frontend.messages_in,
            now.frontend.bytes_in,
            now.backend.messages_out,
            now.backend.bytes_out,
        )
        if delta.auth.publishers_refused or delta.auth.subscribers_refused:
            log.warning(
                "last %g s: refused %d publishers and %d subscribers (unknown keys)",
                interval,
                delta.auth.publishers_refused,
                delta.auth.subscribers_refused,
            )
        return now

    def _query_proxy(self) -> BrokerStats:
        """Ask the proxy thread for its counters; the caller holds ``self._lock``."""
        assert self._started_at is not None
        self._proxy_client.send(STATISTICS)
        if not self._proxy_client.poll(_PROXY_REPLY_TIMEOUT_MS, zmq.POLLIN):
            raise TimeoutError("the proxy did not answer STATISTICS")
        frames = self._proxy_client.recv_multipart()
        stats = BrokerStats.from_proxy_reply(frames, time.monotonic() - self._started_at)
        return attrs.evolve(stats, auth=self._auth(), secure=self._keys is not None)

    def _shutdown(self, thread: threading.Thread) -> None:
        with self._lock:
            if not self._proxy_done.is_set():
                try:
                    self._final = self._query_proxy()
                except TimeoutError:
                    log.warning("no final statistics from the proxy")
                self._proxy_client.send(_TERMINATE)
        thread.join(_THREAD_JOIN_TIMEOUT)
        if thread.is_alive():  # never seen; leave its sockets alone, the process is ending
            log.error("the proxy thread did not terminate")
            return
        if self._final is not None:
            log.info(
                "totals: in %d msgs / %d B, out %d msgs / %d B over %.1f s",
                self._final.frontend.messages_in,
                self._final.frontend.bytes_in,
                self._final.backend.messages_out,
                self._final.backend.bytes_out,
                self._final.uptime,
            )
        self.close()

    def _wake(self) -> None:
        # OSError: the buffer is full (a wake-up is pending anyway) or the broker is closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass


def _bind(sock: zmq.Socket[bytes], endpoint: str) -> str:
    sock.bind(endpoint)
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(bound, bytes)
    return bound.decode()
