"""Password login: who is asked for a password, and checking one off the event loop.

Contract:
- :meth:`PasswordLogin.asks` is True for every name when ``[server] password_auth`` is
  on, and for none when it is off: the methods offered never tell which names have a
  password (:mod:`._passwords`).
- :meth:`PasswordLogin.check` runs the scrypt comparison (a few tens of milliseconds)
  in a worker thread, within the server's :class:`~kindlessh._guesses.GuessBudget`, and
  logs an accepted password. A name without a password costs the same scrypt. A wrong
  password, or one over the budget (not checked at all), is only a ``False``: counting
  it against the connection is the server's part, like any failed login.
- One :class:`PasswordLogin` serves a whole server; the files are re-read only when
  they change, so ``kindlessh user passwd`` needs no restart.
"""

from __future__ import annotations

import logging

from ._guesses import GuessBudget
from ._passwords import Passwords

log = logging.getLogger("kindlessh.server")


class PasswordLogin:
    """The password logins of one server."""

    def __init__(
        self, passwords: Passwords, *, enabled: bool, budget: GuessBudget | None = None
    ) -> None:
        self.passwords = passwords
        self.enabled = enabled
        self.budget = budget or GuessBudget(rate=1000.0, at_once=1000)

    def asks(self, name: str) -> bool:
        """Whether a login as ``name`` is offered a password (every name, or none)."""
        return self.enabled

    async def check(self, name: str, password: str, *, addr: str = "?") -> bool:
        """True when ``password`` is ``name``'s (always False while passwords are off)."""
        if not self.enabled:
            return False
        # scrypt takes a few tens of milliseconds: off the event loop, within the budget.
        ok = await self.budget.run(lambda: self.passwords.check(name, password))
        if ok is None:
            log.debug("%s: a password for %s refused unchecked: over the guess budget",
                      addr, name)
            return False
        if ok:
            log.info("%s: password accepted for %s", addr, name)
        return ok
