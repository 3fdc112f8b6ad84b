"""Counting the login names one address tries: probing for invites and passwords.

Contract:
- :meth:`NameProbes.tried` is told every login name a connection tries, with its peer
  address, and returns True when that name is one too many: the address has tried more
  than ``limit`` distinct names within :data:`WINDOW` seconds. The caller counts it as a
  failed login, which the address's penalty then charges (:mod:`._guard`).
- A name tried again is not a new one. Addresses count as :func:`._guard.source_of`
  says.
- Memory is bounded: per address at most ``limit + 1`` names are remembered, and at most
  :data:`MAX_SOURCES` addresses (the least recently seen go first).
- ``clock`` (monotonic seconds) is a plain attribute so tests can replace it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from ._guard import source_of

WINDOW = 600.0  # seconds a tried name is remembered
MAX_SOURCES = 65536


class NameProbes:
    """The names each address tried lately (see the contract)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.clock: Callable[[], float] = time.monotonic
        self._names: OrderedDict[str, dict[str, float]] = OrderedDict()

    def tried(self, addr: str, name: str) -> bool:
        """``addr`` tries to log in as ``name``; True when it is a name too many."""
        src = source_of(addr)
        now = self.clock()
        names = {n: t for n, t in self._names.pop(src, {}).items() if now - t < WINDOW}
        new = name not in names
        names[name] = now
        if len(names) > self.limit + 1:
            # Keep the newest: enough to know the address is over the limit.
            names = dict(sorted(names.items(), key=lambda item: item[1])[-(self.limit + 1):])
        self._names[src] = names
        while len(self._names) > MAX_SOURCES:
            self._names.popitem(last=False)
        return new and len(names) > self.limit
