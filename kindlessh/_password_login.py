"""Password login: who is asked for a password, and checking one off the event loop.

Contract:
- :meth:`PasswordLogin.asks` is True only when ``[server] password_auth`` is on and the
  name has a password file (:mod:`._passwords`): nobody else is ever asked, so there is
  nothing to guess.
- :meth:`PasswordLogin.check` runs the scrypt comparison (a few tens of milliseconds)
  in a worker thread and logs an accepted password. A wrong one is only a ``False``:
  counting it against the connection is the server's part, like any failed login.
- One :class:`PasswordLogin` serves a whole server; the files are re-read only when
  they change, so ``kindlessh user passwd`` needs no restart.
"""

from __future__ import annotations

import asyncio
import logging

from ._passwords import Passwords

log = logging.getLogger("kindlessh.server")


class PasswordLogin:
    """The password logins of one server."""

    def __init__(self, passwords: Passwords, *, enabled: bool) -> None:
        self.passwords = passwords
        self.enabled = enabled

    def asks(self, name: str) -> bool:
        """Whether a login as ``name`` may use a password."""
        return self.enabled and self.passwords.has(name)

    async def check(self, name: str, password: str, *, addr: str = "?") -> bool:
        """True when ``password`` is ``name``'s (always False while passwords are off)."""
        if not self.enabled:
            return False
        # scrypt takes a few tens of milliseconds: off the event loop.
        ok = await asyncio.to_thread(self.passwords.check, name, password)
        if ok:
            log.info("%s: password accepted for %s", addr, name)
        return ok
