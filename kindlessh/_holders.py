"""Who holds a login: the identity that limits (questions, tokens, chats) belong to.

Contract:
- A login's *holder* is the user name when the name is one person's: it has its own
  keys file under ``[server] users_dir`` (only that user's keys log in as it), or the
  login was by that name's password, or by the invite that just registered a key for it.
- A login with a key of the shared ``authorized_keys`` is held by that key, whatever name
  was typed: :func:`key_holder` (``key:`` and the key's SHA256 fingerprint). One key
  logged in under twelve names is one holder with one set of limits; the name still
  chooses the conversations. A holder of a key can never equal a user name (user names
  have no ``:``).
- :func:`note_signed_keys` tells which key a connection logged in with: asyncssh keeps
  only the key's options, not the key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Protocol

KEY_PREFIX = "key:"


def key_holder(key_data: bytes) -> str:
    """The holder of a login by the public key (or certificate) blob ``key_data``: its
    OpenSSH SHA256 fingerprint, as ``ssh-keygen -l`` shows it, after ``key:``."""
    digest = base64.b64encode(hashlib.sha256(key_data).digest()).decode().rstrip("=")
    return f"{KEY_PREFIX}SHA256:{digest}"


def shown_holder(holder: str) -> str:
    """How a holder is named to its person: a key by its fingerprint, a user by name."""
    return f"key {holder.removeprefix(KEY_PREFIX)}" if holder.startswith(KEY_PREFIX) else holder


class _Connection(Protocol):
    """What :func:`note_signed_keys` uses of ``asyncssh.SSHServerConnection``."""

    def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> Awaitable[bool]: ...


def note_signed_keys(conn: _Connection, on_key: Callable[[bytes], None]) -> None:
    """Call ``on_key(key_data)`` for every key ``conn`` accepts with a valid signature:
    the last one is the key the connection logged in with.

    Strategy: asyncssh checks a key, and then its signature, in
    ``SSHServerConnection.validate_public_key`` and keeps only the key's options; wrapping
    that method on this one connection (as :mod:`._failcount` wraps the failure reply)
    sees the key itself. A key merely queried (no signature) proves nothing and is not
    reported.
    """
    validate = conn.validate_public_key

    async def validated(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        ok = await validate(username, key_data, msg, signature)
        if ok and msg:
            on_key(key_data)
        return ok

    # setattr: mypy refuses an assignment to a method, even on an instance.
    setattr(conn, "validate_public_key", validated)  # noqa: B010
