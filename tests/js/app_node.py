"""A roomd node with a few application events, for the tests of roomd.js.

``python tests/js/app_node.py [--port N] [--config FILE]`` runs a development node that logs
``listening on HOST:PORT`` like ``roomd`` and adds:

* ``echo``: answers its data;
* ``sleep``: waits ``data`` seconds, then answers ``"slept"``;
* ``ask``: sends the calling client a request (``{"event", "data", "timeout"}``) and answers
  ``{"answer": ...}``, or ``{"error": code}`` when the client answered with an error;
* ``kick-me``: closes every connection of the caller with 4010;
* ``drop-me``: drops the caller's connection without a close frame (as a network that fails);
* ``move-me``: sends the caller a ``reconnect`` frame (``{"url", "alternates"}``), as a
  draining node does.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import trio

from roomd import AckError, Context, Node, RequestTimeout, load_config
from roomd.protocol import Reconnect


def build(port: int, config_path: str | None) -> Node:
    config = load_config(config_path)
    config.auth.dev = True
    node = Node(config, name="app", host="127.0.0.1", port=port)

    @node.on("echo")
    async def echo(ctx: Context, data: Any) -> Any:
        return data

    @node.on("sleep")
    async def sleep(ctx: Context, data: Any) -> str:
        await trio.sleep(float(data))
        return "slept"

    @node.on("ask")
    async def ask(ctx: Context, data: Any) -> dict[str, Any]:
        try:
            answer = await ctx.request(data["event"], data.get("data"), data.get("timeout", 5.0))
        except AckError as exc:
            return {"error": exc.code, "message": exc.message}
        except RequestTimeout as exc:
            return {"error": exc.code}
        return {"answer": answer}

    @node.on("kick-me")
    async def kick_me(ctx: Context, data: Any) -> None:
        node.kick(ctx.user, str(data or "kicked"))

    @node.on("drop-me")
    async def drop_me(ctx: Context, data: Any) -> None:
        node._connected[ctx.connection]._break()

    @node.on("move-me")
    async def move_me(ctx: Context, data: Any) -> None:
        alternates = data.get("alternates")
        ctx.connection.send(Reconnect(data["url"], "elsewhere", "draining", alternates))

    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s app %(levelname)s %(message)s")
    trio.run(build(args.port, args.config).run)


if __name__ == "__main__":
    main()
