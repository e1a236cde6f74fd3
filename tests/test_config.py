"""Configuration files."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomd import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_matches_the_defaults() -> None:
    assert load_config(ROOT / "conf" / "roomd.toml", environ={}) == Config()


def test_unknown_keys_and_bad_types_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_conections = 5\n")
    with pytest.raises(ConfigError, match="max_conections"):
        load_config(path, environ={})
    path.write_text('[node]\nport = "x"\n')
    with pytest.raises(ConfigError, match="port"):
        load_config(path, environ={})


def test_environment_secret_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nsecret = "from-file"\n')
    assert load_config(path, environ={"ROOMD_SECRET": "from-env"}).auth.secret == "from-env"
