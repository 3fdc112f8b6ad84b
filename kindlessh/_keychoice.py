"""Which public keys may log in as a given name.

Contract:
- :meth:`KeyChoice.choose` answers for one login name: a name with a file under
  ``[server] users_dir`` logs in with that file's keys alone (a file others may write,
  or one with no usable key, lets nobody in as that name); any other name with the keys
  of the shared ``[server] authorized_keys``. Both files are re-read when they change.
- With ``[storage] url``, the keys enrolled by invite in the database
  (:mod:`._shared_accounts`, read from its in-memory mirror) also log in as their name,
  beside that name's file if it has one; such a name is a user's like one with a file.
- When no key at all is authorized (no shared keys and no users) and no invite is
  pending for the name, the choice carries :data:`NO_KEYS_BANNER`, which tells the
  person connecting how the owner adds a key.
- A problem with a user's file is logged as a warning (for the owner); the choice
  itself never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from ._keys import AuthorizedKeys
from ._users import Users

log = logging.getLogger("kindlessh.server")

NO_KEYS_BANNER = (
    "kindlessh: no keys are authorized on this server yet. The owner adds your public key "
    "(one line from ~/.ssh/id_ed25519.pub) to the authorized_keys file named in its "
    "config; no restart is needed.\r\n"
)


@dataclass(frozen=True)
class Choice:
    """The keys for one name (None: no key logs in), a banner to send, if any, and
    whether they are the name's own (its user file) rather than the shared ones."""

    keys: asyncssh.SSHAuthorizedKeys | None
    banner: str | None = None
    personal: bool = False


class Enrolled(Protocol):
    """The keys enrolled by invite in the database, per name (in memory)."""

    def keys(self, name: str) -> asyncssh.SSHAuthorizedKeys | None: ...

    def lines(self, name: str) -> list[str]: ...

    def names(self) -> list[str]: ...


class KeyChoice:
    """The users' files and the shared ``authorized_keys`` of one server, and the keys
    enrolled in the database when there is one."""

    def __init__(
        self, users: Users, authorized: AuthorizedKeys, enrolled: Enrolled | None = None
    ) -> None:
        self.users = users
        self.authorized = authorized
        self.enrolled = enrolled

    def choose(self, name: str, *, invite_pending: bool = False) -> Choice:
        """The keys that may log in as ``name`` (see the module contract)."""
        user_keys = self.users.authorized(name)
        enrolled = self.enrolled.keys(name) if self.enrolled is not None else None
        if user_keys is not None:
            # The name is a user's: only that user's keys may log in as it.
            keys = user_keys.get()
            if keys is None and user_keys.error:
                log.warning("%s", user_keys.error)
            if enrolled is not None:
                keys = self._both(user_keys, keys, name) if keys is not None else enrolled
            return Choice(keys, personal=True)
        if enrolled is not None:
            return Choice(enrolled, personal=True)
        keys = self.authorized.get()
        enrolled_any = self.enrolled is not None and bool(self.enrolled.names())
        if keys is None and not invite_pending and not self.users.names() and not enrolled_any:
            return Choice(None, NO_KEYS_BANNER)
        return Choice(keys)

    def _both(
        self, user_keys: AuthorizedKeys, keys: asyncssh.SSHAuthorizedKeys, name: str
    ) -> asyncssh.SSHAuthorizedKeys:
        """The user's file and the keys enrolled for ``name`` in the database, together
        (the file read again: asyncssh's key lists cannot be joined)."""
        assert self.enrolled is not None
        try:
            text = user_keys.path.read_text(encoding="utf-8")
            return asyncssh.import_authorized_keys(
                "\n".join([text, *self.enrolled.lines(name)])
            )
        except (OSError, UnicodeDecodeError, ValueError, asyncssh.KeyImportError) as exc:
            log.warning("%s: %s", user_keys.path, exc)
            return keys
