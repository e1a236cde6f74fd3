"""Node configuration: one TOML file, overridden by command-line options and ``ROOMD_SECRET``.

Every limit of the node lives here with its default. Unknown keys in the file are an error, so a
typo never silently leaves a default in place.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from .protocol import PayloadLimits

SendMode = Literal["room", "user", "users", "all"]


@attrs.define
class NodeSection:
    name: str = "roomd"
    host: str = "127.0.0.1"
    port: int = 9000
    # The URL clients reach this node at, told to other nodes (a draining node sends its
    # clients there). Default: ws://HOST:PORT/ws (set it when HOST is 0.0.0.0 or behind a proxy).
    public_url: str | None = None
    # Where `roomd` keeps the secret it makes when none is configured (ROOMD_STATE_DIR
    # overrides it). Default: $XDG_STATE_HOME/roomd, else ~/.local/state/roomd.
    state_dir: str | None = None


@attrs.define
class AuthSection:
    secret: str | None = None  # HS256 key; ROOMD_SECRET overrides it
    dev: bool = False  # accept ?user=NAME without a token (never in production)
    token_ttl: float = 3600.0  # seconds, for `roomd token`
    leeway: float = 10.0  # clock skew tolerated when checking expiry


@attrs.define
class LimitsSection:
    max_connections: int = 10_000  # TCP connections, the ones in the HTTP handshake included
    max_handshakes: int = 1000  # connections not past their HTTP upgrade yet (503 beyond)
    max_connections_per_ip: int = 1000  # from one address, handshaking or open; 0: no cap (429)
    max_connections_per_user: int = 100  # WebSocket connections of one user; 0: no cap (429)
    max_frame_bytes: int = 64 * 1024
    max_depth: int = 32  # objects and arrays nested in one frame (the frame is the first)
    handshake_timeout: float = 10.0  # TCP accept to welcome
    rate: float = 50.0  # frames per second per connection, on average
    burst: int = 100
    max_strikes: int = 10  # strikes before 4009: a refused frame adds one, they fade at 1/s
    max_inflight_events: int = 64  # application events queued per connection ("busy" beyond)
    # built-in events waiting for the cluster per connection (a send for its sequencer): at
    # this many the node stops reading the connection until half of them are answered
    max_waiting_events: int = 64
    max_ack_timeout: float = 30.0  # the longest a room send may wait for acknowledgements
    max_rooms_per_connection: int = 100
    max_members_per_room: int = 10_000
    # room.joined / room.left are pushed in rooms of at most this many users (0: in every
    # room); above it they would cost a push per member per change (n squared).
    announce_members_up_to: int = 1000
    outbox_max_bytes: int = 1024 * 1024  # queued for one slow client before closing it 4008
    close_timeout: float = 2.0  # waiting for the peer's close frame
    max_text_chars: int = 4096
    max_name_chars: int = 128
    max_status_chars: int = 128
    max_url_chars: int = 2048  # image and file URLs
    max_image_side: int = 20_000  # pixels
    max_file_bytes: int = 10 * 2**30  # the size a file message may announce

    def payload_limits(self) -> PayloadLimits:
        return PayloadLimits(
            max_text_chars=self.max_text_chars,
            max_name_chars=self.max_name_chars,
            max_url_chars=self.max_url_chars,
            max_image_side=self.max_image_side,
            max_file_bytes=self.max_file_bytes,
            max_status_chars=self.max_status_chars,
        )


@attrs.define
class HeartbeatSection:
    interval: float = 20.0  # ping a connection idle this long
    timeout: float = 45.0  # close a connection silent this long (4004)


@attrs.define
class PermissionsSection:
    client_send: list[SendMode] = attrs.field(factory=lambda: ["room", "user", "users"])


@attrs.define
class SessionsSection:
    resume_window: float = 120.0  # seconds a dropped session may be resumed in


@attrs.define
class HistorySection:
    """What each node keeps of every stream (a room's messages, a user's inbox)."""

    max_messages: int = 1000  # per stream
    max_age: float = 120.0  # seconds; below sessions.resume_window, resumes may find gaps


@attrs.define
class AccessSection:
    allowed_origins: list[str] = attrs.field(factory=list)  # besides the node's host; "*": any
    require_room_claims: bool = False  # tokens without rooms/namespaces claims may join nothing
    admin_token: str | None = None  # operators' bearer token on HTTP; ROOMD_ADMIN_TOKEN


@attrs.define
class MetricsSection:
    host: str | None = None  # serve /metrics on this address and port instead of the node's
    port: int | None = None
    token: str | None = None  # require Authorization: Bearer TOKEN; ROOMD_METRICS_TOKEN


@attrs.define
class TlsSection:
    cert: str | None = None  # PEM certificate chain: with key, the node serves wss:// and https://
    key: str | None = None  # PEM private key (both are read again on SIGHUP)


@attrs.define
class CompressionSection:
    enabled: bool = True  # permessage-deflate (RFC 7692) when a client offers it
    threshold: int = 1024  # messages shorter than this many bytes stay plain
    level: int = 6  # zlib level, 1 (fastest) to 9 (smallest)
    window_bits: int = 15  # the node's compression window: 2**bits bytes (9..15)


@attrs.define
class ShutdownSection:
    grace: float = 5.0  # seconds to flush and close connections on SIGINT/SIGTERM
    drain: bool = False  # SIGTERM drains (clients move to other nodes) instead of closing 1001
    drain_period: float = 10.0  # seconds over which clients are asked to move, one by one
    drain_timeout: float = 30.0  # seconds a drain may take in all before the rest are closed
    move_timeout: float = 5.0  # seconds a client has to move before it is closed with 1001


ClusterMode = Literal["none", "broker", "mesh"]


@attrs.define
class ClusterNode:
    """One node of a cluster file: where it listens and, in mesh mode, where it publishes.

    What a process binds and where the others reach it are separate settings (they differ
    behind NAT, port mappings, or a bind to ``0.0.0.0``): ``host``/``bus_bind`` are bound,
    ``public_url``/``bus`` are told to the others."""

    name: str
    port: int
    host: str = "127.0.0.1"  # the address its WebSocket/HTTP port binds
    bus: str | None = None  # mesh: where the others reach its PUB socket
    bus_bind: str | None = None  # mesh: what its PUB socket binds (default: bus)
    public_url: str | None = None  # where clients reach it (default: ws://host:port/ws)


@attrs.define
class ClusterBroker:
    """One broker: where nodes reach it. Its public key is ``<cluster.keys>/<name>.key``."""

    name: str
    frontend: str  # its XSUB: nodes publish here
    backend: str  # its XPUB: nodes subscribe here
    frontend_bind: str | None = None  # what `roomd cluster` has it bind (default: frontend)
    backend_bind: str | None = None  # (default: backend)
    # Brokers of one shard carry the same topics (replicas: copies dropped by the receivers);
    # with shards 0..n-1 each topic goes through the brokers of one (a stable hash of it).
    shard: int = 0


@attrs.frozen
class Peer:
    """A mesh peer: its bus endpoint and, for CurveZMQ, its name (its key is ``<name>.key``)."""

    name: str | None
    endpoint: str

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``NAME=ENDPOINT``, or a bare ``ENDPOINT`` (enough with ``cluster.insecure``)."""
        name, sep, endpoint = text.partition("=")
        if sep and "://" not in name:
            return cls(name, endpoint)
        return cls(None, text)


@attrs.define
class ClusterSection:
    mode: ClusterMode = "none"
    broker_frontend: str = "tcp://127.0.0.1:5555"  # nodes publish to the broker's XSUB
    broker_backend: str = "tcp://127.0.0.1:5556"  # nodes subscribe at the broker's XPUB
    brokers: list[ClusterBroker] = attrs.field(factory=list)  # default: the two above ("broker")
    bus: str | None = None  # mesh: where the others reach this node's PUB (default: from `nodes`)
    bus_bind: str | None = None  # mesh: what this node's PUB binds (default: `bus`)
    peers: list[str] = attrs.field(factory=list)  # mesh: NAME=ENDPOINT (default: from `nodes`)
    nodes: list[ClusterNode] = attrs.field(factory=list)
    # CurveZMQ on every bus connection. The key directory holds this node's secret key
    # (<name>.key_secret) and the public keys (*.key) of the brokers and nodes it trusts;
    # default: <state directory>/keys (see `roomd keys`).
    keys: str | None = None
    insecure: bool = False  # a plaintext bus that anyone who reaches it may use (logs a warning)
    heartbeat_interval: float = 0.5  # seconds between node heartbeats
    heartbeat_misses: int = 3  # heartbeats missed before a node is declared down
    snapshot_retry: float = 1.0  # seconds before asking again for an unanswered snapshot
    call_timeout: float = 2.0  # default timeout of cluster calls
    ready_timeout: float = 10.0  # how long a starting node waits for its bus to be ready

    def entry(self, name: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.name == name), None)

    def broker_list(self) -> list[ClusterBroker]:
        """The brokers of broker mode: ``brokers``, else the one of ``broker_frontend`` and
        ``broker_backend``, named ``broker``."""
        if self.brokers:
            return list(self.brokers)
        return [ClusterBroker("broker", self.broker_frontend, self.broker_backend)]

    def mesh_peers(self, name: str) -> tuple[Peer, ...]:
        if self.peers:
            return tuple(Peer.parse(p) for p in self.peers)
        return tuple(Peer(n.name, n.bus) for n in self.nodes if n.name != name and n.bus)


@attrs.define
class Config:
    node: NodeSection = attrs.field(factory=NodeSection)
    auth: AuthSection = attrs.field(factory=AuthSection)
    limits: LimitsSection = attrs.field(factory=LimitsSection)
    heartbeat: HeartbeatSection = attrs.field(factory=HeartbeatSection)
    permissions: PermissionsSection = attrs.field(factory=PermissionsSection)
    access: AccessSection = attrs.field(factory=AccessSection)
    metrics: MetricsSection = attrs.field(factory=MetricsSection)
    compression: CompressionSection = attrs.field(factory=CompressionSection)
    tls: TlsSection = attrs.field(factory=TlsSection)
    shutdown: ShutdownSection = attrs.field(factory=ShutdownSection)
    sessions: SessionsSection = attrs.field(factory=SessionsSection)
    history: HistorySection = attrs.field(factory=HistorySection)
    cluster: ClusterSection = attrs.field(factory=ClusterSection)
    # The [broker] table of a cluster file belongs to `roomd-broker`; nodes ignore it.
    broker: dict[str, Any] = attrs.field(factory=dict)


def state_directory(node: NodeSection, environ: Mapping[str, str] | None = None) -> Path:
    """Where a node keeps its state: ``node.state_dir`` (which ``ROOMD_STATE_DIR`` overrides,
    see :func:`load_config`), else ``$XDG_STATE_HOME/roomd``, else ``~/.local/state/roomd``."""
    if node.state_dir:
        return Path(node.state_dir).expanduser()
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "roomd"


def key_directory(config: Config) -> Path:
    """The cluster's key directory: ``cluster.keys``, else ``keys`` in the state directory."""
    if config.cluster.keys:
        return Path(config.cluster.keys).expanduser()
    return state_directory(config.node) / "keys"


def configure_node(
    config: Config, name: str | None = None, host: str | None = None, port: int | None = None
) -> Config:
    """A copy of ``config`` for one node: its name and overrides applied; a node listed in
    ``cluster.nodes`` takes its host, port and bus endpoint from there unless overridden; the
    key directory is resolved (:func:`key_directory`)."""
    node_name = name if name is not None else config.node.name
    node, cluster = config.node, config.cluster
    entry = cluster.entry(node_name)
    if entry is not None:
        node = attrs.evolve(node, host=entry.host, port=entry.port)
        if entry.public_url is not None:
            node = attrs.evolve(node, public_url=entry.public_url)
        if cluster.bus is None:
            cluster = attrs.evolve(cluster, bus=entry.bus)
        if cluster.bus_bind is None:
            cluster = attrs.evolve(cluster, bus_bind=entry.bus_bind)
    node = attrs.evolve(
        node,
        name=node_name,
        host=host if host is not None else node.host,
        port=port if port is not None else node.port,
    )
    configured = attrs.evolve(config, node=node, cluster=cluster)
    keys = str(key_directory(configured))
    return attrs.evolve(configured, cluster=attrs.evolve(cluster, keys=keys))


class ConfigError(Exception):
    """The configuration file or options are invalid."""


_converter = cattrs.Converter(forbid_extra_keys=True)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from plain data (a parsed TOML document)."""
    try:
        return _converter.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        raise ConfigError("; ".join(cattrs.transform_error(exc, path="config"))) from None


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read ``path`` (defaults apply where it is silent) and apply ``ROOMD_SECRET``,
    ``ROOMD_ADMIN_TOKEN``, ``ROOMD_METRICS_TOKEN`` and ``ROOMD_STATE_DIR``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    config = config_from_dict(data)
    env = os.environ if environ is None else environ
    if env.get("ROOMD_SECRET"):
        config.auth.secret = env["ROOMD_SECRET"]
    if env.get("ROOMD_ADMIN_TOKEN"):
        config.access.admin_token = env["ROOMD_ADMIN_TOKEN"]
    if env.get("ROOMD_METRICS_TOKEN"):
        config.metrics.token = env["ROOMD_METRICS_TOKEN"]
    if env.get("ROOMD_STATE_DIR"):
        config.node.state_dir = env["ROOMD_STATE_DIR"]
    return config
