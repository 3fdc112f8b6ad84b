"""One SSH connection: asyncssh's per-connection callbacks, each handed to the unit that decides.

Contract:
- :class:`Connection` decides nothing itself: admission and penalties are
  :mod:`._guard` (a connection refused by the startup limits or a penalty is dropped
  before the SSH banner); which keys apply to a name is :mod:`._keychoice` (a user's
  file or the shared ``authorized_keys``, re-read when they change; with no keys at all
  the server still runs, refuses everyone, and its auth banner says how the owner adds
  a key); pairing a device by invite code over keyboard-interactive is :mod:`._enrol`
  (not offered at all with no invite pending); passwords, only with ``[server]
  password_auth`` on and only for names that have one, are :mod:`._password_login`;
  counting failed logins is :mod:`._failcount` (the ``max_auth_tries``-th failed login
  ends the connection). One not logged in after ``login_timeout`` is cut; when the
  server itself was held up for :data:`SLOW_LOGIN` seconds or more meanwhile
  (:mod:`._stall`), its address is not penalised for it.
- Key exchanges the client starts are counted by :mod:`._rekeys` (``max_rekeys``).
- Once logged in, a connection counts against ``max_connections`` and
  ``max_connections_per_user`` (over a cap it is closed with the one-line reason), and
  one with no channel open for ``unused_timeout`` seconds is closed (:mod:`._unused`).
- A user name with unprintable characters is refused (asyncssh already refuses control
  characters and names of 1 KiB or more); logs and screens show at most 32 characters
  of any name, sanitised.
- One session per connection, counted against ``max_sessions`` and
  ``max_sessions_per_user``; over a cap the session is a one-line "server full" notice.
  A chat session is given a :class:`~kindlessh._session.SessionDeps`, never the
  :class:`ServerContext`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ._config import Config
from ._enrol import Challenge, Enrolment
from ._failcount import FailedLogins, count_failures
from ._guard import Guard
from ._invites import Invites
from ._keychoice import KeyChoice
from ._password_login import PasswordLogin
from ._provider import Provider
from ._quota import Quota
from ._refused import RefusedSession
from ._rekeys import Rekeys, count_rekeys
from ._sanitize import sanitize_inline
from ._session import Session, SessionDeps
from ._stall import StallWatch
from ._unused import ChannelWatch, watch_channels

log = logging.getLogger("kindlessh.server")

MAX_USERNAME = 32  # characters of a user name shown in logs and on screen
# Seconds the event loop was held up during a login that make a login timeout the
# server's fault, not the client's: a healthy server's loop is late by milliseconds, and
# a login may take 30 s. (:mod:`._stall` sees a stall up to a quarter second short.)
SLOW_LOGIN = 0.5


def acceptable_username(name: str) -> bool:
    """A user name we accept: not empty, and printable (no escapes, no bidi marks).

    Strategy: longer names are accepted and cut for display, as before; the account is
    the sanitised name, which can never equal a ``users_dir`` name unless it is one.
    """
    return bool(name) and name.isprintable()


@dataclass
class ServerContext:
    """What the connections of one server share (the server's own; a chat session is
    given only :attr:`session`)."""

    config: Config
    provider: Provider
    quota: Quota
    guard: Guard
    keys: KeyChoice
    invites: Invites
    passwords: PasswordLogin
    session: SessionDeps
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    stall: StallWatch = field(default_factory=StallWatch)


class Connection(asyncssh.SSHServer):
    """One connection: asyncssh's callbacks, each handed to the unit that decides."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._conn: asyncssh.SSHServerConnection | None = None
        self._addr = "?"
        self._let_in = False
        self._logged_in = False
        self._timed_out = False
        self._server_slow = False
        self._failures = FailedLogins(ctx.config.server.max_auth_tries)
        self._bad_name = False
        self._login_timer: asyncio.TimerHandle | None = None
        self._sessions = 0
        self._session_user: str | None = None
        self._enrol = Enrolment(ctx.invites, ctx.keys.users)
        self._password_ok = False
        self._rekeys = Rekeys(ctx.config.server.max_rekeys)
        self._channels: ChannelWatch | None = None
        self._conn_user: str | None = None  # counted by guard.open_connection

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._addr = self._enrol.addr = str(peer[0]) if peer else "?"
        refusal = self.ctx.guard.admit(self._addr)
        if refusal is not None:
            log.debug("dropped a connection from %s: %s", self._addr, refusal)
            # Before the banner: a refused connection costs no key exchange.
            conn.abort()
            return
        self._let_in = True
        self.ctx.connections.add(conn)
        log.info("connection from %s", self._addr)
        self._login_timer = asyncio.get_running_loop().call_later(
            self.ctx.config.server.login_timeout, self._login_expired
        )
        count_failures(conn, self._failures, self._too_many)
        count_rekeys(conn, self._rekeys, self._too_many_rekeys)
        self._channels = watch_channels(conn, self.ctx.config.server.unused_timeout, self._unused)

    def _too_many(self) -> None:
        log.info("%s: %d failed logins; disconnecting", self._addr, self._failures.limit)

    def _too_many_rekeys(self) -> None:
        log.info(
            "%s: %d key exchanges started by the client; disconnecting",
            self._addr, self._rekeys.started,
        )

    def _unused(self) -> None:
        timeout = self.ctx.config.server.unused_timeout
        log.info("%s: no session for %g s after login; disconnecting", self._addr, timeout)
        if self._conn is not None:
            self._conn.disconnect(
                asyncssh.DISC_BY_APPLICATION, f"kindlessh: no session for {timeout:g} s"
            )

    def _login_expired(self) -> None:
        self._login_timer = None
        self._timed_out = True
        timeout = self.ctx.config.server.login_timeout
        self._server_slow = self.ctx.stall.stalled(timeout) >= SLOW_LOGIN
        if self._server_slow:
            log.info("%s: the server was slow during this login; no penalty", self._addr)
        log.info("%s: not logged in within %g s; disconnecting", self._addr, timeout)
        if self._conn is not None:
            self._conn.disconnect(
                asyncssh.DISC_CONNECTION_LOST, "Timeout before authentication"
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if not self._let_in:
            return
        self._let_in = False
        if self._channels is not None:
            self._channels.stop()
        if self._conn is not None:
            self.ctx.connections.discard(self._conn)
        if self._conn_user is not None:
            self.ctx.guard.close_connection(self._conn_user)
            self._conn_user = None
        if self._session_user is not None:
            self.ctx.guard.close_session(self._session_user)
            self._session_user = None
        failed = self._failures.failed + self._bad_name
        self.ctx.guard.closed(
            self._addr, logged_in=self._logged_in, failed=failed, timed_out=self._timed_out,
            server_slow=self._server_slow,
        )

    def begin_auth(self, username: str) -> bool:
        conn = self._conn
        assert conn is not None
        if not acceptable_username(username):
            # Shown only by its length: the name itself may be an escape sequence.
            self._bad_name = True
            conn.set_authorized_keys(None)
            log.info(
                "%s: refused a user name of %d characters that are not all printable",
                self._addr, len(username),
            )
            conn.disconnect(
                asyncssh.DISC_ILLEGAL_USER_NAME, "kindlessh: a user name must be printable"
            )
            return True
        self._password_ok = self.ctx.passwords.asks(username)
        self._enrol.begin(username)
        choice = self.ctx.keys.choose(username, invite_pending=self._enrol.invite is not None)
        if choice.banner is not None:
            conn.send_auth_banner(choice.banner)
        # Always set, even to None: keys chosen for an earlier name must not carry over.
        conn.set_authorized_keys(choice.keys)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Called only for a key no file authorizes: one an invite may register.
        self._enrol.offer(key)
        return False

    def password_auth_supported(self) -> bool:
        return self._password_ok

    async def validate_password(self, username: str, password: str) -> bool:
        return await self.ctx.passwords.check(username, password, addr=self._addr)

    def kbdint_auth_supported(self) -> bool:
        return self._enrol.asks()

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Challenge:
        return self._enrol.challenge(username)

    async def validate_kbdint_response(self, username: str, responses: Any) -> bool:
        reply = await self._enrol.answer(username, responses)
        if reply.refusal is not None:
            # One line, shown by the client.
            assert self._conn is not None
            self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, reply.refusal)
            return False
        return reply.accepted

    def auth_completed(self) -> None:
        assert self._conn is not None
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self._logged_in = True
        self.ctx.guard.logged_in(self._addr)
        self._rekeys.logged_in()
        user = sanitize_inline(str(self._conn.get_extra_info("username")), MAX_USERNAME)
        full = self.ctx.guard.open_connection(user)
        if full is not None:
            log.info("%s from %s: %s", user, self._addr, full)
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"kindlessh: {full}")
            return
        self._conn_user = user
        log.info("%s logged in from %s", user, self._addr)
        if self._channels is not None:
            self._channels.start()

    def session_requested(self) -> Any:
        assert self._conn is not None
        if self._sessions:
            return False  # one chat per connection
        self._sessions += 1
        username = sanitize_inline(
            str(self._conn.get_extra_info("username") or "you"), MAX_USERNAME
        )
        full = self.ctx.guard.open_session(username)
        if full is not None:
            log.info("%s from %s: %s", username, self._addr, full)
            return RefusedSession(full)
        self._session_user = username
        key_env = self._conn.get_key_option("environment", {})
        env = {str(k): str(v) for k, v in key_env.items()} if isinstance(key_env, dict) else {}
        env.update(self._enrol.env)  # the invite's profile, for this first login too
        return Session(self.ctx.session, username, env, greeting=self._enrol.greeting)
