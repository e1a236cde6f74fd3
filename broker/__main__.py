"""``roomd-broker`` / ``python -m broker``: run the XSUB/XPUB forwarder until SIGINT or SIGTERM.

Once bound, prints one JSON line on stdout with the endpoints actually bound (useful with port
``*``), e.g. ``{"frontend": "tcp://127.0.0.1:5555", "backend": "...", "control": null}``.
Exit status: 0 after a signal, 1 on a runtime failure, 2 on bad options, a key that cannot be
used, or an endpoint that cannot be bound.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import attrs
import zmq

from ._broker import Broker
from ._config import ConfigError, parse_settings
from ._curve import BrokerKeys, KeyFileError, load_broker_keys

log = logging.getLogger("broker")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except ConfigError as exc:
        print(f"roomd-broker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    keys: BrokerKeys | None = None
    if not settings.insecure:
        try:
            keys = load_broker_keys(settings.key_directory(), settings.name)
        except KeyFileError as exc:
            log.error("%s", exc)
            return 2
    broker = Broker(
        settings.frontend,
        settings.backend,
        settings.control,
        stats_interval=settings.stats_interval,
        hwm=settings.hwm,
        keys=keys,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        broker.stop(signal.Signals(signum).name)

    try:
        endpoints = broker.bind()
    except zmq.ZMQError as exc:
        log.error("cannot bind: %s", exc)
        return 2
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(json.dumps(attrs.asdict(endpoints)), flush=True)
    try:
        broker.run()
    except Exception:
        log.exception("the broker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
