"""Admission: which connections may try to log in, and how many chats may run.

asyncssh has none of these limits (DESIGN §4 A3-A5); OpenSSH's MaxStartups,
PerSourceMaxStartups and PerSourcePenalties are the model.

Contract:
- :meth:`Guard.admit` is asked about every new TCP connection before the SSH banner. It
  returns None (let in: the connection counts as *logging in* until :meth:`Guard.logged_in`
  or :meth:`Guard.closed`) or why to drop it at once:
  - its source address is serving a penalty;
  - that address already has ``max_startups_per_source`` connections logging in;
  - ``max_startups_full`` connections are logging in over all; or, from ``max_startups``
    on, a random early drop whose chance rises linearly from ``max_startups_rate`` % to
    100 % at ``max_startups_full``.
- :meth:`Guard.closed` ends a connection that was let in and charges its address by how
  it ended: failed logins ``penalty_authfail`` seconds, cut by the login timeout
  ``penalty_grace`` (nothing when ``server_slow``: the login timed out because the
  server itself was held up), closed without trying ``penalty_noauth``, logged in nothing. The
  seconds drain in real time; once ``penalty_min`` have piled up the address is refused
  for that long, doubled for every penalty it served within the last ``penalty_max``
  seconds, and never longer than ``penalty_max``. Addresses in ``penalty_exempt`` are
  never charged. IPv4 addresses count per /32, IPv6 per /128 (an IPv4-mapped IPv6
  address as its IPv4 address).
- At most :data:`MAX_SOURCES` addresses are remembered; past that, new addresses go
  unpenalised rather than evict others (OpenSSH's "permissive" overflow), so memory stays
  bounded under a spoofed flood.
- :meth:`Guard.open_session` and :meth:`Guard.close_session` count chat sessions:
  ``max_sessions`` in all and ``max_sessions_per_user`` per holder (:mod:`._holders`:
  a user, or one shared key whatever names it logs in as). Over a cap,
  ``open_session`` returns the one "server full" line to show instead of the chat.
- :meth:`Guard.open_connection` and :meth:`Guard.close_connection` count logged-in
  connections: ``max_connections`` in all and ``max_connections_per_user`` per holder.
  Over a cap, ``open_connection`` returns the one-line reason the connection is closed.
- With :attr:`Guard.shared` set (the store is PostgreSQL: several workers may serve one
  holder), :meth:`Guard.seat` also counts the session against ``max_sessions_per_user``
  over every worker, in the database: a seat to give back when the session ends, or the
  same "server full" line; when the database cannot be asked, the process's own count
  stands (logged) and the session opens. The in-process counts above stay the first,
  cheap gate; the totals (``max_sessions``, ``max_connections``) protect one process
  and stay its own.
  Likewise :meth:`Guard.share_connection` counts a logged-in connection against
  ``max_connections_per_user`` over every worker, in the background (asyncssh's login
  callback cannot wait): over the cap, ``refuse`` is called with the line, and the
  connection is to be closed with it.
- ``clock`` (monotonic seconds) and ``rng`` are plain attributes so tests can replace them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address

from ._config import ServerConfig, parse_networks
from ._sanitize import sanitize_inline
from ._shared_limits import Seat, SharedLimits

log = logging.getLogger("kindlessh.guard")

MAX_SOURCES = 65536
_WARN_EVERY = 60.0  # seconds between two "dropping connections" warnings


def source_of(addr: str) -> str:
    """The penalty and startup key of a peer address: the address, IPv4-mapped unwrapped."""
    try:
        ip = ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass
class _Record:
    drains_at: float = 0.0  # the piled-up penalty seconds run out at this time
    refused_until: float = 0.0
    served: int = 0  # penalties served recently; each doubles the next


class Guard:
    """Counters and penalties shared by every connection of one server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.clock: Callable[[], float] = time.monotonic
        self.rng = random.Random()
        self._exempt = parse_networks(config.penalty_exempt)
        self._records: dict[str, _Record] = {}
        self._next_purge = 0.0
        self._logging_in: dict[str, int] = {}
        self._logging_in_total = 0
        self._sessions = _Caps("chats are open", "chat")
        self._connections = _Caps("connections are logged in", "connection")
        self._warned_at = -_WARN_EVERY
        self.shared: SharedLimits | None = None

    # ----- before login ---------------------------------------------------------------

    @property
    def logging_in(self) -> int:
        """Connections let in that have not logged in yet."""
        return self._logging_in_total

    def refused_for(self, addr: str) -> float:
        """Seconds ``addr`` stays refused for its penalty (0 when it is not)."""
        record = self._records.get(source_of(addr))
        return max(0.0, record.refused_until - self.clock()) if record else 0.0

    def admit(self, addr: str) -> str | None:
        """Let a new connection from ``addr`` in (None), or say why it is dropped."""
        cfg = self.config
        src = source_of(addr)
        left = self.refused_for(src)
        if left > 0:
            return f"penalty for failed logins, {left:.0f} s left"
        if self._logging_in.get(src, 0) >= cfg.max_startups_per_source:
            return f"{cfg.max_startups_per_source} connections from it are logging in already"
        total = self._logging_in_total
        if total >= cfg.max_startups:
            full = cfg.max_startups_full
            chance = 100.0
            if total < full:
                ramp = (total - cfg.max_startups) / (full - cfg.max_startups)
                chance = cfg.max_startups_rate + (100 - cfg.max_startups_rate) * ramp
            if self.rng.random() * 100 < chance:
                self._warn_startups(total)
                return f"{total} connections are logging in (max_startups)"
        self._logging_in[src] = self._logging_in.get(src, 0) + 1
        self._logging_in_total += 1
        return None

    def _warn_startups(self, total: int) -> None:
        now = self.clock()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "dropping new connections: %d are logging in at once (max_startups %d, "
                "full at %d); a scan or a flood?",
                total, self.config.max_startups, self.config.max_startups_full,
            )

    def _left_login(self, src: str) -> None:
        _count_down(self._logging_in, src)
        self._logging_in_total = max(0, self._logging_in_total - 1)

    def logged_in(self, addr: str) -> None:
        """A connection from ``addr`` that was let in has logged in."""
        self._left_login(source_of(addr))

    def closed(
        self, addr: str, *, logged_in: bool, failed: int, timed_out: bool,
        server_slow: bool = False,
    ) -> None:
        """A connection from ``addr`` that was let in has closed; charge its penalty.

        Args:
            addr: the peer address.
            logged_in: it logged in (no penalty).
            failed: how many login attempts failed on it.
            timed_out: it was cut by the login timeout.
            server_slow: the server's event loop was held up while it was logging in, so
                a timeout is the server's fault, not the client's.
        """
        src = source_of(addr)
        if logged_in:
            return
        self._left_login(src)
        cfg = self.config
        if timed_out:
            if not server_slow:
                self.charge(src, cfg.penalty_grace)
        elif failed:
            self.charge(src, cfg.penalty_authfail)
        else:
            self.charge(src, cfg.penalty_noauth)

    def charge(self, addr: str, seconds: float) -> None:
        """Add ``seconds`` of penalty to ``addr``; refuse it once enough have piled up."""
        src = source_of(addr)
        if seconds <= 0 or self._is_exempt(src):
            return
        now = self.clock()
        record = self._records.get(src)
        if record is None:
            if len(self._records) >= MAX_SOURCES:
                self._purge(now)
                if len(self._records) >= MAX_SOURCES:
                    return  # permissive overflow: never evict a penalty being served
            record = self._records[src] = _Record()
        if record.refused_until > now:
            return  # connections let in before the penalty began add nothing
        cfg = self.config
        record.drains_at = max(record.drains_at, now) + seconds
        pending = record.drains_at - now
        if pending < cfg.penalty_min:
            return
        recent = record.refused_until > 0 and now - record.refused_until < cfg.penalty_max
        record.served = min(record.served + 1, 30) if recent else 0
        length = min(cfg.penalty_max, pending * 2**record.served)
        record.refused_until = now + length
        record.drains_at = now
        log.warning("refusing %s for %.0f s after repeated failed or idle logins", src, length)

    def _is_exempt(self, src: str) -> bool:
        if not self._exempt:
            return False
        try:
            ip = ip_address(src)
        except ValueError:
            return False
        return any(ip in net for net in self._exempt)

    def _purge(self, now: float) -> None:
        """Forget addresses quiet for ``penalty_max`` (at most one sweep a second)."""
        if now < self._next_purge:
            return
        self._next_purge = now + 1.0
        horizon = now - self.config.penalty_max
        self._records = {
            src: r for src, r in self._records.items()
            if max(r.drains_at, r.refused_until) > horizon
        }

    # ----- after login ----------------------------------------------------------------

    @property
    def sessions(self) -> int:
        """Chat sessions open now."""
        return self._sessions.total

    def open_session(self, user: str, name: str | None = None) -> str | None:
        """Count a new chat session for the holder ``user`` (None), or the "server full"
        line; ``name`` is the login name the line speaks to (default ``user``)."""
        cfg = self.config
        return self._sessions.open(user, name, cfg.max_sessions, cfg.max_sessions_per_user)

    async def seat(self, user: str, name: str | None = None) -> Seat | str | None:
        """Count a session that :meth:`open_session` let in against the per-holder cap
        over every worker: its :class:`Seat` (release it when the session ends), the
        "server full" line, or None when there are no shared limits."""
        if self.shared is None:
            return None
        most = self.config.max_sessions_per_user
        try:
            seat = await self.shared.claim_seat(user, "session", most)
        except Exception:
            # The database is away: the process's own count (open_session) stands, as
            # for share_connection; a session is never left hanging on it.
            log.exception("could not count a session over every worker")
            return None
        return seat if seat is not None else self._sessions.full_for(user, name, most)

    def close_session(self, user: str) -> None:
        """A chat session counted by :meth:`open_session` has ended."""
        self._sessions.close(user)

    @property
    def logged_in_connections(self) -> int:
        """Connections logged in now (counted by :meth:`open_connection`)."""
        return self._connections.total

    def open_connection(self, user: str, name: str | None = None) -> str | None:
        """Count a connection that has just logged in for the holder ``user`` (None), or
        the line saying why it is closed instead; ``name`` is the login name the line
        speaks to (default ``user``)."""
        cfg = self.config
        return self._connections.open(
            user, name, cfg.max_connections, cfg.max_connections_per_user
        )

    def share_connection(
        self, user: str, name: str, refuse: Callable[[str], None]
    ) -> Callable[[], None]:
        """Count a connection that :meth:`open_connection` let in against the per-holder
        cap over every worker (see the contract); returns what to call when it closes."""
        shared = self.shared
        if shared is None:
            return lambda: None
        most = self.config.max_connections_per_user
        seat: Seat | None = None

        async def claim() -> None:
            nonlocal seat
            try:
                seat = await shared.claim_seat(user, "connection", most)
            except Exception:  # the database is away: the process's own count stands
                log.exception("could not count a connection over every worker")
                return
            if seat is None:
                refuse(self._connections.full_for(user, name, most))

        task = asyncio.get_running_loop().create_task(claim())

        def release() -> None:
            if not task.done():
                task.cancel()  # a seat claimed meanwhile is given back (SharedLimits)
            elif seat is not None:
                seat.release()

        return release

    def close_connection(self, user: str) -> None:
        """A connection counted by :meth:`open_connection` has closed."""
        self._connections.close(user)


class _Caps:
    """Things open now, in all and per holder, against a total and a per-holder cap."""

    def __init__(self, what: str, noun: str) -> None:
        self.what = what  # "chats are open": how the refusal says what is full
        self.noun = noun  # "chat": what the holder should close
        self.per: dict[str, int] = {}
        self.total = 0

    def open(self, holder: str, name: str | None, most: int, most_each: int) -> str | None:
        """Count one more for ``holder`` (None), or the "server full" line."""
        if self.total >= most:
            return (
                f"server full: {most} {self.what}, the most this server takes. "
                "Try again later."
            )
        if self.per.get(holder, 0) >= most_each:
            return self.full_for(holder, name, most_each)
        self.per[holder] = self.per.get(holder, 0) + 1
        self.total += 1
        return None

    def full_for(self, holder: str, name: str | None, most_each: int) -> str:
        """The line refusing one more for ``holder`` (``name``: as typed)."""
        shown = sanitize_inline(name if name is not None else holder, 40)
        return (
            f"server full for {shown}: {most_each} {self.what} under this name or "
            f"key, the most allowed. Close a {self.noun} and try again."
        )

    def close(self, holder: str) -> None:
        """One fewer for ``holder``."""
        _count_down(self.per, holder)
        self.total = max(0, self.total - 1)


def _count_down(counts: dict[str, int], key: str) -> None:
    """One fewer for ``key``; at zero the key goes, so that the table holds only the
    sources (or users) with something open, not every one ever seen."""
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)
