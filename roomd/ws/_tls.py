"""The server's side of a TLS connection over memory buffers, sans-I/O.

:class:`TlsSession` wraps :class:`ssl.SSLObject` between two :class:`ssl.MemoryBIO`: bytes that
arrived from the network go in with :meth:`~TlsSession.receive` and come out decrypted;
plaintext goes in with :meth:`~TlsSession.send` and :meth:`~TlsSession.outgoing` gives the
records to write. The caller owns the socket, so the node keeps its own writing strategy over
TLS: a connection's whole outbox is encrypted and written with one ``send``, and the frames in
it are still the ones encoded once for every recipient (only the encryption is per connection).
"""

from __future__ import annotations

import ssl
from typing import Final

TLS_RECORD: Final = 16 * 1024  # the most plaintext one record carries


class TlsError(Exception):
    """The peer broke the TLS protocol (or failed the handshake): drop the connection."""


class TlsSession:
    """One server-side TLS connection (see the module's docstring).

    Error handling: :meth:`handshake` and :meth:`receive` raise :class:`TlsError` when the peer
    sent something TLS refuses; the connection cannot go on.
    """

    __slots__ = ("_incoming", "_object", "_outgoing", "closed", "handshake_done")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.closed = False  # the peer sent close_notify
        self.handshake_done = False

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes from the peer; whether the handshake is complete (then
        :meth:`outgoing` holds what is left to send, and :meth:`receive` may hold early data)."""
        if data:
            self._incoming.write(data)
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TlsError(str(exc)) from None
        self.handshake_done = True
        return True

    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the peer; the plaintext they complete (possibly none)."""
        if data:
            self._incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = self._object.read(TLS_RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            except ssl.SSLError as exc:
                raise TlsError(str(exc)) from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` (the records wait in :meth:`outgoing`)."""
        if data:
            self._object.write(data)

    def outgoing(self) -> bytes:
        """The records to write, in order (and forget them)."""
        return self._outgoing.read()

    @property
    def wants_to_write(self) -> bool:
        return self._outgoing.pending > 0
