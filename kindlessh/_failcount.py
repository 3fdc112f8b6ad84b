"""Counting failed logins on one connection, and cutting it at the limit.

Contract:
- :class:`FailedLogins` counts the "authentication failed" replies sent on one
  connection. The first reply is free: clients open with a ``none`` request to learn
  the methods (OpenSSH does not count it either). :meth:`FailedLogins.reply` returns
  False for the ``limit``-th failure: that reply must not be sent, the connection is
  ended instead. :attr:`FailedLogins.failed` is the count the penalties use.
- :func:`count_failures` puts a :class:`FailedLogins` between an asyncssh server
  connection and its failure replies: every reply is counted, and at the limit the
  connection is disconnected with "Too many authentication failures".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import asyncssh


class FailedLogins:
    """The failure replies of one connection, against ``limit`` (see the contract)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.replies = 0

    @property
    def failed(self) -> int:
        """Failed logins so far (every reply but the first)."""
        return max(0, self.replies - 1)

    def reply(self) -> bool:
        """Count one failure reply; False when it is the one over the limit."""
        self.replies += 1
        return self.failed < self.limit


class _Connection(Protocol):
    """What :func:`count_failures` uses of ``asyncssh.SSHServerConnection``."""

    def send_userauth_failure(self, partial_success: bool) -> None: ...

    def disconnect(self, code: int, reason: str) -> None: ...


def count_failures(
    conn: _Connection, counter: FailedLogins, on_limit: Callable[[], None]
) -> None:
    """Count every failure reply ``conn`` sends; at the limit call ``on_limit`` and
    disconnect instead of replying.

    Strategy: asyncssh has no hook for a failed attempt (a refused method never reaches
    the ``SSHServer``, and the connection class cannot be chosen through ``listen``), but
    every failure, whatever the method, is answered by ``send_userauth_failure``;
    wrapping it on this one connection counts them all.
    """
    send = conn.send_userauth_failure

    def counted(partial_success: bool) -> None:
        if not counter.reply():
            on_limit()
            conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "Too many authentication failures",
            )
            return
        send(partial_success)

    # setattr: mypy refuses an assignment to a method, even on an instance.
    setattr(conn, "send_userauth_failure", counted)  # noqa: B010
