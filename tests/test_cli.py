"""The `roomd` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest


def roomd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomd.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_token_is_signed_with_the_configured_secret() -> None:
    secret = "s" * 40
    out = roomd("token", "--user", "alice", "--ttl", "60", env={"ROOMD_SECRET": secret})
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60


def test_token_without_secret_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROOMD_SECRET"}
    env["ROOMD_STATE_DIR"] = str(tmp_path)  # where no node made a secret
    out = subprocess.run(
        [sys.executable, "-m", "roomd.cli", "token", "--user", "alice"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode != 0 and "ROOMD_SECRET" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--config", "/nonexistent.toml"), "cannot read"),
    ],
)
def test_node_refuses_to_start_with_a_clear_error(args: tuple[str, ...], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROOMD_SECRET"}
    out = subprocess.run(
        [sys.executable, "-m", "roomd.cli", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode != 0 and message in out.stderr


def test_short_secrets_are_refused_by_the_command() -> None:
    out = roomd("token", "--user", "alice", env={"ROOMD_SECRET": "a"})
    assert out.returncode != 0 and "at least 32 bytes" in out.stderr
    out = roomd("--port", "0", env={"ROOMD_SECRET": "x" * 31})
    assert out.returncode != 0 and "at least 32 bytes" in out.stderr
