"""Counting the key exchanges a client starts on one connection, and cutting it over the limit.

Contract:
- :class:`Rekeys` is the budget of re-keys one client may start. The first exchange,
  and every one the server starts itself (asyncssh's ``rekey_bytes``/``rekey_seconds``),
  are free. Before login the client may start :data:`PRE_LOGIN_REKEYS`; after login up
  to ``per_hour`` at once, refilled at ``per_hour`` an hour. :meth:`Rekeys.allow`
  returns False for the one over the budget.
- :func:`count_rekeys` puts a :class:`Rekeys` in front of one asyncssh connection's
  handling of the client's KEXINIT: a re-key over the budget is not started, the
  connection is disconnected with "Too many key exchanges" and ``on_limit`` is called.

Why a limit at all: even a cheap exchange (curve25519, about 1 ms) costs the server a
key agreement and a new set of ciphers, and a client can ask for one in every round
trip, before it has proved anything. Real clients re-key after gigabytes or an hour
(PuTTY every 60 minutes, Dropbear every 8 hours); a chat moves kilobytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncssh
from asyncssh.constants import MSG_KEXINIT

PRE_LOGIN_REKEYS = 1  # re-keys a client may start before it has logged in


class Rekeys:
    """The re-keys one client may start (see the contract)."""

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self.started = 0  # re-keys the client started (the first exchange not counted)
        self._before_login = 0
        self._tokens = float(per_hour)
        self._filled_at: float | None = None  # None until login

    def logged_in(self) -> None:
        """The connection has logged in: the hourly budget applies from now."""
        if self._filled_at is None:
            self._filled_at = self.clock()

    def allow(self) -> bool:
        """Count one re-key the client starts; False when it is over the budget."""
        self.started += 1
        if self._filled_at is None:
            self._before_login += 1
            return self._before_login <= PRE_LOGIN_REKEYS
        now = self.clock()
        rate = self.per_hour / 3600
        self._tokens = min(float(self.per_hour), self._tokens + (now - self._filled_at) * rate)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def count_rekeys(conn: Any, counter: Rekeys, on_limit: Callable[[], None]) -> None:
    """Count every key exchange the client of ``conn`` (an asyncssh connection) starts;
    over the budget call ``on_limit`` and disconnect instead of starting it.

    Strategy: asyncssh has no hook for a peer's KEXINIT and no limit on them. Packets
    are dispatched through the ``_packet_handlers`` table, looked up on the connection
    object, so this connection gets its own copy with the KEXINIT entry wrapped. A
    KEXINIT that answers one the server sent (the first exchange, or asyncssh's own
    timed re-key) arrives while ``_kexinit_sent`` is set, and is not counted.

    Raises:
        RuntimeError: this asyncssh has no such table or flag (an upgrade changed them):
            refusing every connection is better than running without the limit.
    """
    table = getattr(conn, "_packet_handlers", None)
    if not isinstance(table, Mapping) or MSG_KEXINIT not in table or not hasattr(
        conn, "_kexinit_sent"
    ):
        raise RuntimeError("this asyncssh version cannot count key exchanges")
    original = table[MSG_KEXINIT]

    def counted(self: Any, pkttype: int, pktid: int, packet: Any) -> Any:
        if not conn._kexinit_sent and not counter.allow():
            on_limit()
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Too many key exchanges")
            return None
        return original(self, pkttype, pktid, packet)

    handlers = dict(table)
    handlers[MSG_KEXINIT] = counted
    conn._packet_handlers = handlers
