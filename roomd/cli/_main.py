"""The ``roomd`` command.

``roomd [options]`` runs a node; ``roomd token --user NAME`` mints a token.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import trio

from .._config import Config, ConfigError, key_directory, load_config
from .._version import __version__
from ..io import make_keys, read_public_key
from ..node import OPERATOR_CLAIM, Node, check_secret, mint_token
from ._first_run import StateError, StoredSecret, operator_name, signin_links, use_stored_secret

log = logging.getLogger("roomd")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd",
        description="Run a roomd node. Other commands: token, drain, keys, cluster, chat, "
        "discover, bench (roomd COMMAND --help).",
    )
    parser.add_argument("--version", action="version", version=f"roomd {__version__}")
    parser.add_argument("--name", help="node name (default: from config, else 'roomd')")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port for WebSocket and HTTP (default 9000)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: accept ?user=NAME without a token",
    )
    parser.add_argument(
        "--mdns", action="store_true", help="advertise this node on the LAN as _roomd._tcp.local."
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain: serve wss:// (read again on SIGHUP)",
    )
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    cluster = parser.add_argument_group("cluster (overrides the config file's [cluster])")
    cluster.add_argument("--cluster", choices=["none", "broker", "mesh"], help="cluster mode")
    cluster.add_argument("--broker-frontend", metavar="ENDPOINT", help="broker XSUB endpoint")
    cluster.add_argument("--broker-backend", metavar="ENDPOINT", help="broker XPUB endpoint")
    cluster.add_argument(
        "--bus", metavar="ENDPOINT", help="mesh: where the other nodes reach this node's PUB"
    )
    cluster.add_argument(
        "--bus-bind", metavar="ENDPOINT", help="mesh: what this node's PUB binds (default: --bus)"
    )
    cluster.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=ENDPOINT",
        help="mesh: a peer's name and bus (its key is NAME.key in the key directory)",
    )
    cluster.add_argument(
        "--keys",
        metavar="DIR",
        help="the key directory: NAME.key_secret (this node), the brokers' and peers' *.key",
    )
    cluster.add_argument(
        "--insecure-bus",
        action="store_true",
        help="no CurveZMQ (cluster.insecure): a plaintext bus that anyone who reaches it may use",
    )
    _common(parser)
    return parser


def _cluster_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd cluster",
        description="Run the broker (in broker mode) and every node of a cluster file, "
        "with prefixed output. Ctrl-C stops them all.",
    )
    parser.add_argument("--config", default="conf/cluster.toml", metavar="FILE")
    parser.add_argument("--no-color", action="store_true", help="plain prefixes")
    parser.add_argument(
        "node_args", nargs=argparse.REMAINDER, help="extra options for every node (after --)"
    )
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd token", description="Mint a token signed with the configured secret."
    )
    parser.add_argument("--user", required=True, help="the user id (the token's sub)")
    parser.add_argument("--ttl", type=float, help="lifetime in seconds (default: config)")
    parser.add_argument(
        "--operator", action="store_true", help="an operator's token (may drain nodes)"
    )
    _common(parser)
    return parser


def _drain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd drain",
        description="Drain a node: its clients move to the other nodes with nothing lost, "
        "then it stops. Needs an operator token (minted from the configured secret unless "
        "--token is given; none for a node in development mode).",
    )
    parser.add_argument("url", help="the node, e.g. http://127.0.0.1:9001")
    parser.add_argument("--token", help="an operator token (roomd token --operator)")
    _common(parser)
    return parser


def _keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd keys",
        description="Make CurveZMQ keypairs for the cluster bus: NAME.key (the public key, to "
        "give to the brokers and nodes it meets) and NAME.key_secret (mode 0600, for the "
        "process of that name only), in the key directory.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="a node's or a broker's name")
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="the key directory (default: cluster.keys of --config, else keys in the state "
        "directory)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    _common(parser)
    return parser


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"roomd: {exc}") from None


def _secret(config: Config, *, create: bool) -> StoredSecret | None:
    """Give ``config`` the stored secret when it has none (and is not in development mode):
    the one a node made on its first run, or (``create``) a new one. ``None`` when one is
    configured, or none is stored and none is to be made."""
    if config.auth.secret or config.auth.dev:
        return None
    try:
        return use_stored_secret(config, create=create)
    except StateError as exc:
        raise SystemExit(f"roomd: {exc}") from None


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(argv)
    config = _load(args.config)
    if args.dev:
        config.auth.dev = True
    config.tls.cert = args.tls_cert or config.tls.cert
    config.tls.key = args.tls_key or config.tls.key
    section = config.cluster
    section.mode = args.cluster or section.mode
    section.broker_frontend = args.broker_frontend or section.broker_frontend
    section.broker_backend = args.broker_backend or section.broker_backend
    section.bus = args.bus or section.bus
    section.bus_bind = args.bus_bind or section.bus_bind
    section.peers = args.peer or section.peers
    section.keys = args.keys or section.keys
    section.insecure = args.insecure_bus or section.insecure
    name = args.name or config.node.name
    _setup_logging(args.log_level, name)
    stored = _secret(config, create=True)
    try:
        node = Node(config, name=args.name, host=args.host, port=args.port)
    except ValueError as exc:
        raise SystemExit(f"roomd: {exc}") from None
    announce = None
    if config.auth.dev:
        log.warning("development mode: ?user=NAME is accepted without a token")
    elif stored is not None:
        made = "made a secret and keeps it" if stored.created else "uses the secret kept"
        log.info(
            "no secret configured: roomd %s in %s (roomd token uses it too)", made, stored.path
        )
        announce = functools.partial(_announce, node)
    trio.run(_run_until_signal, node, args.mdns, announce)
    return 0


def _announce(node: Node, port: int) -> None:
    """Print links that open the chat app and the operator view signed in (first run)."""
    assert node.config.auth.secret is not None
    user = operator_name()
    chat, admin = signin_links(node.config.node.host, port, node.config.auth.secret, user)
    log.info("open the chat, signed in as %s: %s", user, chat)
    log.info("the operator view: %s", admin)
    log.info("tokens for others: roomd token --user NAME, then /?token=TOKEN")


async def _run_until_signal(
    node: Node, mdns: bool = False, announce: Callable[[int], None] | None = None
) -> None:
    """Run ``node``; the first SIGINT/SIGTERM shuts it down gracefully, a second one at once;
    SIGHUP reloads its TLS certificate. ``announce(port)`` is called once it listens."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, node, nursery.cancel_scope)
            stopped = trio.Event()
            port = await nursery.start(_run_node, node, stopped)
            if announce is not None:
                announce(port)
            if mdns:
                from ..io import advertise

                await nursery.start(advertise, node.name, node.config.node.host, port, __version__)
            await stopped.wait()
            nursery.cancel_scope.cancel()


async def _run_node(
    node: Node, stopped: trio.Event, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await node.run(task_status=task_status)
    finally:
        stopped.set()


async def _on_signals(signals: AsyncIterator[int], node: Node, scope: trio.CancelScope) -> None:
    count = 0
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            node.reload_tls()
            continue
        count += 1
        if count == 1:
            if not (node.config.shutdown.drain and node.drain()):
                node.shutdown()
        else:
            scope.cancel()


def token(argv: Sequence[str]) -> int:
    args = _token_parser().parse_args(argv)
    config = _load(args.config)
    _secret(config, create=False)
    if not config.auth.secret:
        raise SystemExit(
            "roomd: no secret configured: set ROOMD_SECRET or auth.secret, or start a node "
            "once without them: it makes one and keeps it for roomd token"
        )
    try:
        check_secret(config.auth.secret)
    except ValueError as exc:
        raise SystemExit(f"roomd: {exc}") from None
    ttl = args.ttl if args.ttl is not None else config.auth.token_ttl
    claims = {OPERATOR_CLAIM: True} if args.operator else {}
    print(mint_token(config.auth.secret, args.user, ttl, **claims))
    return 0


def drain(argv: Sequence[str]) -> int:
    """``roomd drain URL``: POST /drain to the node; exit status 0 once it drains."""
    args = _drain_parser().parse_args(argv)
    config = _load(args.config)
    token = args.token
    if token is None:
        _secret(config, create=False)
    if token is None and config.auth.secret:
        token = mint_token(config.auth.secret, "roomd-drain", 60, **{OPERATOR_CLAIM: True})
    url = args.url.rstrip("/").replace("ws://", "http://").removesuffix("/ws") + "/drain"
    request = urllib.request.Request(url, method="POST", data=b"")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            print(answer.read().decode())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"roomd drain: {url}: {exc.code} {exc.read().decode()}") from None
    except OSError as exc:
        raise SystemExit(f"roomd drain: {url}: {exc}") from None
    return 0


def keys(argv: Sequence[str]) -> int:
    """``roomd keys NAME...``: a keypair for each name, in the key directory."""
    args = _keys_parser().parse_args(argv)
    config = _load(args.config)
    directory = Path(args.dir).expanduser() if args.dir else key_directory(config)
    try:
        written = make_keys(directory, args.names, force=args.force)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"roomd keys: {exc}") from None
    for name, (public, secret) in zip(args.names, written, strict=True):
        print(f"{name}: {public} (public key {read_public_key(public)}), {secret} (secret)")
    return 0


def cluster(argv: Sequence[str]) -> int:
    from .._launcher import ensure_keys, plan, run_children

    args = _cluster_parser().parse_args(argv)
    config = _load(args.config)
    if not config.cluster.nodes:
        raise SystemExit(f"roomd: {args.config} lists no [[cluster.nodes]]")
    node_args = [a for a in args.node_args if a != "--"]
    try:
        made = ensure_keys(config)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"roomd cluster: {exc}") from None
    if made:
        print(f"made CurveZMQ keys for {', '.join(made)} in {key_directory(config)}", flush=True)
    return trio.run(run_children, plan(config, args.config, node_args), not args.no_color)


def chat(argv: Sequence[str]) -> int:
    from ._chat import chat_main

    return chat_main(argv)


def discover(argv: Sequence[str]) -> int:
    from ._discover import discover_main

    return discover_main(argv)


def bench(argv: Sequence[str]) -> int:
    from ..bench import main as bench_main

    return bench_main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "keys": keys,
    "token": token,
    "drain": drain,
    "cluster": cluster,
    "chat": chat,
    "discover": discover,
    "bench": bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    return serve(args)
