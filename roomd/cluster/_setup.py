"""The bus a cluster section describes: its brokers or peers, and its keys.

CurveZMQ is the default: a node reads its keypair from ``<cluster.keys>/<name>.key_secret`` and
the public key of every broker or peer it connects to from ``<cluster.keys>/<their name>.key``;
in mesh mode every ``*.key`` of the directory may subscribe to it. ``cluster.insecure = true``
turns all of it off (and is logged as a warning when the node starts).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from .._config import ClusterSection
from ..io import (
    Flusher,
    KeyFileError,
    Keypair,
    TrustedKeys,
    public_key_path,
    read_keypair,
    read_public_key,
    secret_key_path,
)
from ._bus import Bus, Remote

log = logging.getLogger("roomd.bus")


def make_bus(
    name: str,
    section: ClusterSection,
    *,
    flusher: Flusher,
    on_batch: Callable[[list[bytes]], Awaitable[None]],
) -> Bus:
    """The bus of node ``name``.

    Error handling: :exc:`ValueError` (a :exc:`~roomd.io.KeyFileError` for keys) when a key is
    missing or unusable, or a mesh peer has no name while the bus is secure; the message says
    what to do.
    """
    liveness = section.heartbeat_interval * section.heartbeat_misses
    keys: Keypair | None = None
    directory = Path(section.keys) if section.keys else None
    if section.insecure:
        log.warning(
            "%s: cluster.insecure = true: the bus is plaintext and unauthenticated; anyone "
            "who can reach it can read every room and publish as any node",
            name,
        )
    else:
        if directory is None:
            raise ValueError("cluster.keys is not set (or set cluster.insecure = true)")
        keys = own_keypair(name, directory)
    if section.mode == "broker":
        remotes = [
            Remote(
                b.name, b.backend, b.frontend, _public(directory, b.name, "broker", keys), b.shard
            )
            for b in section.broker_list()
        ]
        return Bus(
            name,
            flusher=flusher,
            mode="broker",
            on_batch=on_batch,
            remotes=remotes,
            keys=keys,
            liveness=liveness,
        )
    peers = []
    for peer in section.mesh_peers(name):
        if keys is not None and peer.name is None:
            raise ValueError(
                f"mesh peer {peer.endpoint} has no name: write NAME={peer.endpoint} (its key is "
                "NAME.key in the key directory), or list it in [[cluster.nodes]]"
            )
        label = peer.name or peer.endpoint
        peers.append(Remote(label, peer.endpoint, None, _public(directory, label, "peer", keys)))
    return Bus(
        name,
        flusher=flusher,
        mode="mesh",
        on_batch=on_batch,
        remotes=peers,
        bind=section.bus_bind or section.bus,
        keys=keys,
        trusted=TrustedKeys(directory) if keys is not None and directory is not None else None,
        liveness=liveness,
    )


def own_keypair(name: str, directory: Path) -> Keypair:
    path = secret_key_path(directory, name)
    if not path.exists():
        raise KeyFileError(
            f"no CURVE key for node {name}: {path} does not exist. Make one with "
            f"`roomd keys {name} --dir {directory}` and give {name}.key to the brokers (or "
            "peers), or set cluster.insecure = true for a plaintext bus"
        )
    return read_keypair(path)


def _public(directory: Path | None, name: str, what: str, keys: Keypair | None) -> str | None:
    if keys is None or directory is None:
        return None
    path = public_key_path(directory, name)
    if not path.exists():
        raise KeyFileError(
            f"no public key for the {what} {name}: {path} does not exist (copy its {name}.key "
            "there)"
        )
    return read_public_key(path)
