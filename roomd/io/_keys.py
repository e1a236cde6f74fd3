"""CURVE key files: making them, reading them, and the directory of trusted keys.

A key directory holds, for each name (a node, a broker), the public key in ``NAME.key`` and,
on the machine that runs it, the secret key in ``NAME.key_secret`` (mode 0600). This is the
layout and the format (ZPL, with Z85 keys) of CZMQ's ``zcert`` and pyzmq's ``zmq.auth``
(``create_certificates``, ``load_certificate``), so their tools read these files. Every
``*.key`` file of the directory is a trusted public key: whoever holds the matching secret key
may connect to the sockets this process binds.

No ZeroMQ here but key generation, which is libzmq's (:func:`~roomd.io._zmq.curve_keypair`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from ._zmq import Keypair, curve_keypair, curve_public

__all__ = [
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "KeyFileError",
    "TrustedKeys",
    "make_keys",
    "public_key_path",
    "read_keypair",
    "read_public_key",
    "secret_key_path",
    "write_keypair",
]

log = logging.getLogger("roomd.keys")

PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
_Z85: Final = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, malformed, or readable by others."""


def public_key_path(directory: str | os.PathLike[str], name: str) -> Path:
    return Path(directory) / f"{name}{PUBLIC_SUFFIX}"


def secret_key_path(directory: str | os.PathLike[str], name: str) -> Path:
    return Path(directory) / f"{name}{SECRET_SUFFIX}"


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.endswith(PUBLIC_SUFFIX):
        raise ValueError(f"{name!r} cannot name a key file (letters, digits, '_', '.', '-')")


def _document(name: str, keypair: Keypair, secret: bool) -> str:
    if secret:
        head = [
            f"#   roomd: the CURVE secret key of {name}. Give it to no one; keep it mode 0600.",
            f"#   Its public key is in {name}{PUBLIC_SUFFIX}.",
        ]
    else:
        head = [f"#   roomd: the CURVE public key of {name}. Share it with the processes it meets."]
    lines = [*head, "", "metadata", f'    name = "{name}"', "curve"]
    lines.append(f'    public-key = "{keypair.public}"')
    if secret:
        lines.append(f'    secret-key = "{keypair.secret}"')
    return "\n".join(lines) + "\n"


def write_keypair(
    directory: str | os.PathLike[str], name: str, keypair: Keypair, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory`` (made, mode
    0700, if missing); the paths of both.

    Error handling: :exc:`FileExistsError` if either file exists and not ``force`` (then
    neither is written); with ``force`` each is replaced atomically. :exc:`ValueError` for a
    name that cannot be a file name. :exc:`OSError` as the file system says.
    """
    _check_name(name)
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = public_key_path(folder, name), secret_key_path(folder, name)
    if not force:
        for path in (secret, public):
            if path.exists():
                raise FileExistsError(f"{path} exists (--force replaces it)")
    _write(secret, _document(name, keypair, secret=True), 0o600, force)
    _write(public, _document(name, keypair, secret=False), 0o644, force)
    return public, secret


def _write(path: Path, text: str, mode: int, replace: bool) -> None:
    """Create ``path`` with ``mode`` from the start (never readable by others meanwhile)."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def make_keys(
    directory: str | os.PathLike[str], names: Iterable[str], *, force: bool = False
) -> list[tuple[Path, Path]]:
    """A new keypair for each name, written with :func:`write_keypair` (nothing is written
    if a file exists and not ``force``)."""
    names = list(names)
    for name in names:
        _check_name(name)
    if not force:
        for name in names:
            for path in (secret_key_path(directory, name), public_key_path(directory, name)):
                if path.exists():
                    raise FileExistsError(f"{path} exists (--force replaces it)")
    return [write_keypair(directory, name, curve_keypair(), force=force) for name in names]


def _fields(path: Path) -> dict[str, str]:
    """The ``public-key`` and ``secret-key`` of a ZPL key file (as pyzmq reads them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        for field in ("public-key", "secret-key"):
            if line.startswith(field) and "=" in line:
                fields.setdefault(field, line.split("=", 1)[1].strip(" \t'\""))
    for field, value in fields.items():
        if not _Z85.fullmatch(value):
            raise KeyFileError(f"{path}: its {field} is not a Z85 key (40 characters)")
    if "public-key" not in fields:
        raise KeyFileError(f"{path} holds no public-key")
    return fields


def read_public_key(path: str | os.PathLike[str]) -> str:
    """The public key (Z85) in a key file.

    Error handling: :exc:`KeyFileError` (missing, unreadable, or no public key in it)."""
    return _fields(Path(path))["public-key"]


def read_keypair(path: str | os.PathLike[str]) -> Keypair:
    """The keypair in a secret key file.

    Error handling: :exc:`KeyFileError` for a file that is missing, unreadable, readable or
    writable by others than its owner, without a secret key, or whose public key is not the
    secret key's.
    """
    path = Path(path)
    fields = _fields(path)
    if "secret-key" not in fields:
        raise KeyFileError(f"{path} holds no secret-key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(
            f"{path} may be read by others (mode {mode:o}): chmod 600 {path}, or make a new "
            "keypair (roomd keys --force)"
        )
    keypair = Keypair(fields["public-key"], fields["secret-key"])
    if curve_public(keypair.secret) != keypair.public:
        raise KeyFileError(f"{path}: its public-key is not that of its secret-key")
    return keypair


@attrs.define
class TrustedKeys:
    """The public keys of a key directory (every ``*.key`` file), read again whenever a file
    in it was added, removed or changed: adding or removing a file changes who may connect
    from the next connection on, with no restart.

    A file that cannot be read or holds no key is skipped, with a warning (once per change).
    """

    directory: Path
    _stamp: tuple[tuple[str, int, int], ...] | None = None
    _keys: dict[str, str] = attrs.field(factory=dict)  # public key -> the file's name

    def name_of(self, key: str) -> str | None:
        """The name of the file that holds ``key`` (``serverA`` for ``serverA.key``), or None
        if it is not trusted."""
        self._refresh()
        return self._keys.get(key)

    def __contains__(self, key: str) -> bool:
        return self.name_of(key) is not None

    def __len__(self) -> int:
        self._refresh()
        return len(self._keys)

    def _refresh(self) -> None:
        try:
            paths = sorted(self.directory.glob(f"*{PUBLIC_SUFFIX}"))
            stamp = tuple((p.name, *_mtime_size(p)) for p in paths)
        except OSError as exc:
            log.warning("cannot list the trusted keys in %s: %s", self.directory, exc)
            return
        if stamp == self._stamp:
            return
        keys: dict[str, str] = {}
        for path in paths:
            try:
                keys[read_public_key(path)] = path.name.removesuffix(PUBLIC_SUFFIX)
            except KeyFileError as exc:
                log.warning("a trusted key is skipped: %s", exc)
        self._stamp, self._keys = stamp, keys


def _mtime_size(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, -1)
    return (st.st_mtime_ns, st.st_size)
