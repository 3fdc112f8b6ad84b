"""Closing a logged-in connection that has no channel open (OpenSSH's UnusedConnectionTimeout).

Contract:
- :func:`watch_channels` follows the channels of one asyncssh connection. Once
  :meth:`ChannelWatch.start` is called (at login), whenever the connection has no channel
  open for ``timeout`` seconds - none opened since login, or the last one closed -
  ``on_unused`` is called once. Opening a channel stops the count; closing the last
  one starts it again. :meth:`ChannelWatch.stop` (when the connection is lost) cancels
  it. A ``timeout`` of 0 turns the watch off.

Why: a client that logs in and opens no session costs a file descriptor and a
connection object for as long as it likes; a thousand of them exhaust the server's file
descriptors, and then nobody can log in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class ChannelWatch:
    """The open channels of one connection, and the timer while there are none."""

    def __init__(self, timeout: float, on_unused: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_unused = on_unused
        self.open = 0
        self._started = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The connection has logged in: from now on, no channel for long closes it."""
        self._started = True
        self._arm()

    def stop(self) -> None:
        """The connection is gone: nothing more to watch."""
        self._started = False
        self._cancel()

    def opened(self) -> None:
        self.open += 1
        self._cancel()

    def closed(self) -> None:
        self.open = max(0, self.open - 1)
        self._arm()

    def _arm(self) -> None:
        if self._started and self.open == 0 and self.timeout and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.timeout, self._fire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if self._started and self.open == 0:
            self._started = False
            self.on_unused()


def watch_channels(conn: Any, timeout: float, on_unused: Callable[[], None]) -> ChannelWatch:
    """A :class:`ChannelWatch` over ``conn`` (an asyncssh connection).

    Strategy: asyncssh tells the server about a session channel but not when it is
    gone, and not at all about channels refused by type; every channel, though, is
    registered with the connection's ``add_channel`` and leaves through
    ``remove_channel``. Wrapping the two on this one connection counts them all.
    """
    watch = ChannelWatch(timeout, on_unused)
    add, remove = conn.add_channel, conn.remove_channel

    def added(chan: Any) -> int:
        number = add(chan)
        watch.opened()
        return int(number)

    def removed(recv_chan: int) -> None:
        remove(recv_chan)
        watch.closed()

    # setattr: mypy refuses an assignment to a method, even on an instance.
    setattr(conn, "add_channel", added)  # noqa: B010
    setattr(conn, "remove_channel", removed)  # noqa: B010
    return watch
