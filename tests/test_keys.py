"""CurveZMQ key files: `roomd keys`, reading them back, the trusted keys of a directory, and what
a node says when its key is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth

from roomd.io import (
    KeyFileError,
    TrustedKeys,
    curve_keypair,
    read_keypair,
    read_public_key,
    write_keypair,
)


def roomd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomd.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_roomd_keys_makes_keypairs_and_never_overwrites_without_force(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    done = roomd("keys", "broker", "serverA", "--dir", str(keys))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in keys.iterdir()) == [
        "broker.key",
        "broker.key_secret",
        "serverA.key",
        "serverA.key_secret",
    ]
    for name in ("broker", "serverA"):
        secret, public = keys / f"{name}.key_secret", keys / f"{name}.key"
        assert secret.stat().st_mode & 0o777 == 0o600
        assert public.stat().st_mode & 0o077 == 0o044  # others may read a public key
        keypair = read_keypair(secret)
        assert read_public_key(public) == keypair.public
        assert keypair.public in done.stdout and keypair.secret not in done.stdout
        # The layout and format of pyzmq's zmq.auth (and CZMQ's zcert): their tools read them.
        assert zmq.auth.load_certificate(secret) == (
            keypair.public.encode(),
            keypair.secret.encode(),
        )
        assert zmq.auth.load_certificate(public) == (keypair.public.encode(), None)
    assert set(zmq.auth.load_certificates(keys)) == {
        read_public_key(keys / "broker.key").encode(),
        read_public_key(keys / "serverA.key").encode(),
    }
    assert (keys.stat().st_mode & 0o777) == 0o700

    before = (keys / "serverA.key_secret").read_text()
    again = roomd("keys", "serverB", "serverA", "--dir", str(keys))
    assert again.returncode != 0
    assert "serverA.key_secret exists (--force replaces it)" in again.stderr
    assert (keys / "serverA.key_secret").read_text() == before
    assert not (keys / "serverB.key").exists()  # nothing is written when one exists

    forced = roomd("keys", "serverA", "--dir", str(keys), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (keys / "serverA.key_secret").read_text() != before
    assert (keys / "serverA.key_secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in keys.iterdir() if p.name.startswith(".")] == []


def test_roomd_keys_defaults_to_the_state_directory(tmp_path: Path) -> None:
    done = roomd("keys", "serverA", env={"ROOMD_STATE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys" / "serverA.key_secret").exists()
    bad = roomd("keys", "../escape", "--dir", str(tmp_path))
    assert bad.returncode != 0 and "cannot name a key file" in bad.stderr


def test_a_secret_key_file_is_checked(tmp_path: Path) -> None:
    keypair = curve_keypair()
    _, secret = write_keypair(tmp_path, "a", keypair)
    assert read_keypair(secret) == keypair
    secret.chmod(0o640)
    with pytest.raises(KeyFileError, match="may be read by others"):
        read_keypair(secret)
    secret.chmod(0o600)
    other = curve_keypair()
    secret.write_text(secret.read_text().replace(keypair.public, other.public))
    with pytest.raises(KeyFileError, match="not that of its secret-key"):
        read_keypair(secret)
    secret.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(KeyFileError, match="not a Z85 key"):
        read_keypair(secret)
    with pytest.raises(KeyFileError, match="does not exist"):
        read_keypair(tmp_path / "missing.key_secret")
    with pytest.raises(KeyFileError, match="holds no secret-key"):
        read_keypair(tmp_path / "a.key")


def test_trusted_keys_follow_the_directory(tmp_path: Path) -> None:
    trusted = TrustedKeys(tmp_path)
    a, b = curve_keypair(), curve_keypair()
    write_keypair(tmp_path, "a", a)
    assert trusted.name_of(a.public) == "a" and b.public not in trusted
    write_keypair(tmp_path, "b", b)
    assert b.public in trusted and len(trusted) == 2
    (tmp_path / "a.key").unlink()
    assert a.public not in trusted  # (its secret file is not a trusted key)
    (tmp_path / "junk.key").write_text("not a key\n")
    assert len(trusted) == 1  # skipped, with a warning


def test_a_node_without_its_key_says_how_to_make_one(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cluster = ["--cluster", "broker", "--keys", str(keys), "--dev", "--name", "serverA"]
    done = roomd(*cluster)
    assert done.returncode != 0
    assert f"no CURVE key for node serverA: {keys}/serverA.key_secret does not exist" in (
        done.stderr
    )
    assert f"roomd keys serverA --dir {keys}" in done.stderr
    assert roomd("keys", "serverA", "--dir", str(keys)).returncode == 0
    done = roomd(*cluster)
    assert done.returncode != 0
    assert f"no public key for the broker broker: {keys}/broker.key does not exist" in (done.stderr)
