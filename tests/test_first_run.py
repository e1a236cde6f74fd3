"""The first run, as real processes: `roomd` with no secret configured and without --dev makes a
secret in its state directory (a temporary one here), prints links that sign in, and uses the
same secret the next time, as `roomd token` does; a configured secret or --dev change nothing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
import pytest
import trio

from roomd.cli._first_run import StoredSecret, operator_name, stored_secret
from roomd.client import ConnectFailed, open_client
from tests.cluster_support import NodeProc, Proc

LINK = re.compile(r"open the chat, signed in as (\S+): (http://127\.0\.0\.1:(\d+)/\?token=(\S+))")
ADMIN = re.compile(r"the operator view: (http://127\.0\.0\.1:\d+/admin\?token=(\S+))")


def environment(state_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who configured nothing (state under ``state_home``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROOMD_SECRET", "ROOMD_STATE_DIR")}
    return {**env, "XDG_STATE_HOME": str(state_home), **extra}


@asynccontextmanager
async def node(env: dict[str, str], *args: str) -> AsyncIterator[Proc]:
    """`roomd --name serverA --port 0 ARGS` with ``env``, until it listens."""
    argv = [sys.executable, "-m", "roomd.cli", "--name", "serverA", "--port", "0", *args]
    proc = NodeProc("serverA", argv, env=env)
    async with trio.open_nursery() as nursery:
        await proc.start(nursery)
        try:
            await proc.wait_for("listening on")
            yield proc
        finally:
            proc.kill()
            with trio.CancelScope(shield=True):
                assert proc.process is not None
                await proc.process.wait()
            nursery.cancel_scope.cancel()


def roomd_token(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "roomd.cli", "token", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


async def welcomed_as(port: int, token: str) -> str:
    async with open_client(f"ws://127.0.0.1:{port}", token=token) as client:
        assert client.user is not None
        return client.user


async def test_first_run_makes_a_secret_and_prints_links_that_sign_in(tmp_path: Path) -> None:
    env = environment(tmp_path / "state")
    secret_file = tmp_path / "state" / "roomd" / "secret"
    with trio.fail_after(30):
        async with node(env) as first:
            await first.wait_for(f"made a secret and keeps it in {re.escape(str(secret_file))}")
            link = await first.wait_for(LINK.pattern)
            admin = await first.wait_for(ADMIN.pattern)
            secret = secret_file.read_text().strip()
            assert len(secret) >= 43  # secrets.token_urlsafe(32)
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
            assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
            user, port, token = link.group(1), int(link.group(3)), link.group(4)
            assert user == operator_name()
            claims = jwt.decode(token, secret, algorithms=["HS256"])
            assert claims["sub"] == user and "operator" not in claims
            assert jwt.decode(admin.group(2), secret, algorithms=["HS256"])["operator"] is True
            assert await welcomed_as(port, token) == user
            minted = roomd_token(env, "--user", "bob")  # the same secret, found by itself
            assert minted.returncode == 0, minted.stderr
            assert await welcomed_as(port, minted.stdout.strip()) == "bob"
        async with node(env) as second:  # the next run: the same secret
            await second.wait_for("uses the secret kept in")
            again = await second.wait_for(LINK.pattern)
            assert secret_file.read_text().strip() == secret
            assert await welcomed_as(int(again.group(3)), token) == user


@pytest.mark.parametrize("how", ["secret", "dev"])
async def test_a_configured_secret_or_dev_mode_behave_as_before(tmp_path: Path, how: str) -> None:
    if how == "secret":
        env, args = environment(tmp_path, ROOMD_SECRET="a-configured-secret-" + "x" * 30), ()
    else:
        env, args = environment(tmp_path), ("--dev",)
    with trio.fail_after(20):
        async with node(env, *args) as proc:
            port = int((await proc.wait_for(r"listening on \S+:(\d+)")).group(1))
            if how == "dev":
                await proc.wait_for("development mode")
                async with open_client(f"ws://127.0.0.1:{port}", user="dora") as client:
                    assert client.user == "dora"
            else:
                forged = jwt.encode({"sub": "eve", "exp": 2**40}, "another-secret" * 3, "HS256")
                with pytest.raises(ConnectFailed):
                    await welcomed_as(port, forged)
            assert not any("signed in" in line or "secret" in line for line in proc.lines)
    assert not (tmp_path / "roomd").exists()


def test_a_stored_secret_others_may_read_is_refused(tmp_path: Path) -> None:
    env = environment(tmp_path)
    made = stored_secret(tmp_path / "roomd")
    assert made is not None and made.created
    assert stored_secret(tmp_path / "roomd") == StoredSecret(made.value, made.path, False)
    made.path.chmod(0o644)
    argv = [sys.executable, "-m", "roomd.cli", "--name", "serverA", "--port", "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0
    assert f"{made.path} may be read by others (mode 644): chmod 600" in out.stderr


def test_the_secret_is_never_kept_in_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "project" / ".git").mkdir(parents=True)
    env = environment(tmp_path, ROOMD_STATE_DIR=str(tmp_path / "project" / "state"))
    argv = [sys.executable, "-m", "roomd.cli", "--port", "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0 and "inside the git repository" in out.stderr
    assert not (tmp_path / "project" / "state").exists()
    refused = roomd_token(env, "--user", "bob")  # nothing made there either
    assert refused.returncode != 0 and "inside the git repository" in refused.stderr
