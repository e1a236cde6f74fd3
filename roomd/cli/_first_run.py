"""The first run: a node started with no secret configured (and not in development mode) makes
one, keeps it in its state directory for the next runs and for ``roomd token``, and prints links
that open the chat app (and the operator view) signed in, as Jupyter does.

The state directory is ``$ROOMD_STATE_DIR``, else the setting ``node.state_dir``, else
``$XDG_STATE_HOME/roomd``, else ``~/.local/state/roomd``. The secret is the file ``secret`` there,
readable by its owner only (0600), never inside a git repository.
"""

from __future__ import annotations

import getpass
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from .._config import Config
from .._config import state_directory as _state_directory
from ..node import OPERATOR_CLAIM, mint_token

SECRET_FILE: Final = "secret"
LINK_TTL: Final = 7 * 24 * 3600.0  # seconds a printed sign-in link stays valid
FALLBACK_USER: Final = "admin"  # the signed-in user when the login name is not a usable name
WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


class StateError(Exception):
    """The state directory or its secret cannot be used (the message says why and what to do)."""


@attrs.frozen
class StoredSecret:
    value: str
    path: Path
    created: bool  # made by this run


def state_directory(config: Config, environ: Mapping[str, str] | None = None) -> Path:
    """Where a node keeps its state (see :func:`roomd._config.state_directory`)."""
    return _state_directory(config.node, environ)


def stored_secret(directory: Path, *, create: bool = True) -> StoredSecret | None:
    """The secret kept in ``directory``, made there (``secrets.token_urlsafe(32)``, mode 0600)
    if there is none yet and ``create`` (else ``None``). Two processes that start at once end
    up with the same one.

    Error handling: :class:`StateError` for a directory inside a git repository, a secret file
    others may read, an empty one, or one that cannot be read or written.
    """
    directory = directory.absolute()
    repository = _repository_of(directory)
    if repository is not None:
        raise StateError(
            f"the state directory {directory} is inside the git repository {repository}: "
            "the secret must not be; set ROOMD_STATE_DIR (or node.state_dir) elsewhere"
        )
    path = directory / SECRET_FILE
    if not create and not path.exists():
        return None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = _create(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StateError(
                f"{path} may be read by others (mode {mode:o}): chmod 600 {path}, or remove it "
                "to have a new secret made (tokens signed with the old one stop working)"
            )
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StateError(f"cannot keep the secret in {directory}: {exc}") from None
    if not value:
        raise StateError(f"{path} is empty: remove it to have a new secret made")
    return StoredSecret(value, path, created)


def _create(path: Path) -> bool:
    """Put a new secret at ``path`` unless one is there; whether it did. The file appears whole
    or not at all (written aside, then linked into place), so no reader sees it half written."""
    if path.exists():
        return False
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        os.link(draft, path)
    except FileExistsError:
        return False  # another process made it meanwhile: use theirs
    finally:
        os.unlink(draft)
    return True


def _repository_of(directory: Path) -> Path | None:
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def use_stored_secret(
    config: Config, *, create: bool, environ: Mapping[str, str] | None = None
) -> StoredSecret | None:
    """Give ``config`` the stored secret (made if there is none and ``create``); the caller
    checked that none is configured. Error handling: :class:`StateError`."""
    stored = stored_secret(state_directory(config, environ), create=create)
    if stored is not None:
        config.auth.secret = stored.value
    return stored


def operator_name() -> str:
    """Who the printed links sign in: the login name, if it is a usable roomd name."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        return FALLBACK_USER
    usable = 0 < len(name) <= 64 and name.isprintable() and not name.isspace()
    return name if usable else FALLBACK_USER


def signin_links(
    host: str, port: int, secret: str, user: str, ttl: float = LINK_TTL
) -> tuple[str, str]:
    """Links to the chat app and the operator view of the node at ``host:port``, signed in as
    ``user`` (the operator view's token carries the operator claim)."""
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    if ":" in shown:  # an IPv6 address
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}"
    chat = mint_token(secret, user, ttl)
    operator = mint_token(secret, user, ttl, **{OPERATOR_CLAIM: True})
    return f"{base}/?token={chat}", f"{base}/admin?token={operator}"
