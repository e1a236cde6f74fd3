"""``roomd discover``: list the nodes advertised on the local network."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import attrs
import trio

from ..client import DEFAULT_DISCOVER_TIMEOUT, discover


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd discover", description="List the roomd nodes advertised on the local network."
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_DISCOVER_TIMEOUT)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def discover_main(argv: Sequence[str]) -> int:
    """``roomd discover [--timeout S] [--json]``; exit status 1 when nothing was found."""
    args = _parser().parse_args(argv)
    try:
        nodes = trio.run(discover, args.timeout)
    except OSError as exc:
        raise SystemExit(f"roomd discover: {exc}") from None
    for node in nodes:
        if args.json:
            print(json.dumps(attrs.asdict(node)))
        else:
            print(f"{node.name}\t{node.url}\tversion {node.version}\tprotocol {node.protocol}")
    if not nodes and not args.json:
        print(f"no roomd node answered within {args.timeout:g} s")
    return 0 if nodes else 1
