"""Broker settings: built-in defaults, then a TOML file's ``[broker]`` table, then the CLI."""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._broker import DEFAULT_HWM

__all__ = ["BrokerSettings", "ConfigError", "default_keys", "parse_settings"]


class ConfigError(Exception):
    """The config file or the command line is invalid (the message says which key and why)."""


def _non_negative(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attr.name} must be >= 0, got {value!r}")


def _log_level(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(logging.getLevelName(value.upper()), int):
        raise ConfigError(f"{attr.name}: unknown log level {value!r}")


def default_keys(environ: Mapping[str, str] | None = None) -> Path:
    """The key directory roomd uses when none is configured: ``keys`` in its state directory
    (``$ROOMD_STATE_DIR``, else ``$XDG_STATE_HOME/roomd``, else ``~/.local/state/roomd``)."""
    env = os.environ if environ is None else environ
    if env.get("ROOMD_STATE_DIR"):
        return Path(env["ROOMD_STATE_DIR"]).expanduser() / "keys"
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "roomd" / "keys"


@attrs.frozen(kw_only=True)
class BrokerSettings:
    frontend: str = "tcp://127.0.0.1:5555"
    backend: str = "tcp://127.0.0.1:5556"
    control: str | None = None
    stats_interval: float = attrs.field(default=10.0, validator=_non_negative)
    log_level: str = attrs.field(default="INFO", validator=_log_level)
    hwm: int = attrs.field(default=DEFAULT_HWM, validator=_non_negative)
    # CurveZMQ: the broker's secret key is KEYS/NAME.key_secret; every KEYS/*.key may connect.
    name: str = "broker"
    keys: str | None = None  # default: default_keys()
    insecure: bool = False  # plaintext, and anyone who reaches the ports may publish and read

    def key_directory(self) -> Path:
        return Path(self.keys).expanduser() if self.keys else default_keys()


_TYPES: dict[str, tuple[type, ...]] = {
    "frontend": (str,),
    "backend": (str,),
    "control": (str,),
    "stats_interval": (int, float),
    "log_level": (str,),
    "hwm": (int,),
    "name": (str,),
    "keys": (str,),
    "insecure": (bool,),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd-broker",
        description="XSUB/XPUB forwarder for roomd nodes: nodes' PUB sockets connect to the "
        "frontend, their SUB sockets to the backend. Prints the bound endpoints as one JSON line "
        "on stdout once ready.",
    )
    default = BrokerSettings()
    # Every option defaults to None: only what was given overrides the config file.
    parser.add_argument("--frontend", help=f"XSUB endpoint to bind ({default.frontend})")
    parser.add_argument("--backend", help=f"XPUB endpoint to bind ({default.backend})")
    parser.add_argument("--control", help="REP endpoint answering STATISTICS (off by default)")
    parser.add_argument(
        "--stats-interval",
        type=float,
        help=f"seconds between statistics log lines, 0 = never ({default.stats_interval:g})",
    )
    parser.add_argument("--log-level", help=f"DEBUG, INFO, WARNING... ({default.log_level})")
    parser.add_argument("--hwm", type=int, help=f"per-pipe high-water mark ({default.hwm})")
    parser.add_argument(
        "--name", help=f"its key is KEYS/NAME.key_secret (default {default.name!r})"
    )
    parser.add_argument(
        "--keys",
        metavar="DIR",
        help="key directory: this broker's secret key, and the public keys (*.key) of the "
        f"nodes that may connect (default {default_keys()})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="no CurveZMQ: plaintext, and anyone who reaches the ports may publish and read",
    )
    parser.add_argument("--config", type=Path, help="TOML file with a [broker] table")
    return parser


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    table = data.get("broker", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [broker] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _TYPES:
            raise ConfigError(f"{path}: unknown key {key!r} in [broker] ({', '.join(_TYPES)})")
        types = _TYPES[name]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise ConfigError(f"{path}: [broker] {key} has the wrong type: {value!r}")
        values[name] = value
    return values


def parse_settings(argv: Sequence[str] | None = None) -> BrokerSettings:
    """Settings from *argv* (default ``sys.argv[1:]``) and the ``--config`` file it names.

    Error handling:
        Exits with status 2 and a usage message on a bad option (argparse); raises
        :exc:`ConfigError` for a bad config file or value.
    """
    args = vars(_build_parser().parse_args(argv))
    config_path = args.pop("config")
    values = _read_config(config_path) if config_path is not None else {}
    values.update({k: v for k, v in args.items() if v is not None})
    if values.get("control") == "":
        values["control"] = None  # (an empty endpoint turns the file's off)
    if "stats_interval" in values:
        values["stats_interval"] = float(values["stats_interval"])
    return BrokerSettings(**values)
