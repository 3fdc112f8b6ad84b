"""Which public keys may log in as a given name.

Contract:
- :meth:`KeyChoice.choose` answers for one login name: a name with a file under
  ``[server] users_dir`` logs in with that file's keys alone (a file others may write,
  or one with no usable key, lets nobody in as that name); any other name with the keys
  of the shared ``[server] authorized_keys``. Both files are re-read when they change.
- When no key at all is authorized (no shared keys and no users) and no invite is
  pending for the name, the choice carries :data:`NO_KEYS_BANNER`, which tells the
  person connecting how the owner adds a key.
- A problem with a user's file is logged as a warning (for the owner); the choice
  itself never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


class KeyChoice:
    """The users' files and the shared ``authorized_keys`` of one server."""

    def __init__(self, users: Users, authorized: AuthorizedKeys) -> None:
        self.users = users
        self.authorized = authorized

    def choose(self, name: str, *, invite_pending: bool = False) -> Choice:
        """The keys that may log in as ``name`` (see the module contract)."""
        user_keys = self.users.authorized(name)
        if user_keys is not None:
            # The name is a user's: only that user's keys may log in as it.
            keys = user_keys.get()
            if keys is None and user_keys.error:
                log.warning("%s", user_keys.error)
            return Choice(keys, personal=True)
        keys = self.authorized.get()
        if keys is None and not invite_pending and not self.users.names():
            return Choice(None, NO_KEYS_BANNER)
        return Choice(keys)
