"""One SSH connection: asyncssh's per-connection callbacks, each handed to the unit that decides.

Contract:
- :class:`Connection` decides nothing itself: admission and penalties are
  :mod:`._guard` (a connection refused by the startup limits or a penalty is dropped
  before the SSH banner); which keys apply to a name is :mod:`._keychoice` (a user's
  file or the shared ``authorized_keys``, re-read when they change; with no keys at all
  the server still runs, refuses everyone, and its auth banner says how the owner adds
  a key); pairing a device by invite code over keyboard-interactive is :mod:`._enrol`
  (offered to every name while any invite is pending, to none otherwise); passwords,
  only with ``[server] password_auth`` on, are :mod:`._password_login` (then offered to
  every name): which names have an invite or a password never shows in the methods
  offered. Counting failed logins is :mod:`._failcount` (the ``max_auth_tries``-th
  failed login ends the connection); each login name past ``max_names_per_source``
  from one address counts as one more (:mod:`._probes`). One not logged in after
  ``login_timeout`` is cut; when the server itself was held up for :data:`SLOW_LOGIN`
  seconds or more meanwhile (:mod:`._stall`), its address is not penalised for it.
- The peer address is the client's as :mod:`._front` gives it (a trusted proxy's PROXY
  header, or the TCP peer); the accept line logs it with its port, and says "via proxy
  ADDRESS" when a proxy sent it.
- Key exchanges the client starts are counted by :mod:`._rekeys` (``max_rekeys``).
- A user name is refused, with a one-line reason, when it is longer than
  :data:`MAX_USERNAME` characters or not all printable (asyncssh already refuses control
  characters); it is never cut, so two names never share an account. Logs and screens
  show it sanitised.
- Limits belong to the login's holder (:mod:`._holders`): the name for a user with
  their own file, a password or an invite; the key's fingerprint for a key of the
  shared ``authorized_keys``, whatever name it typed. The chat is given the holder
  (questions, tokens). Once logged in, a connection counts against ``max_connections``
  and, per holder, ``max_connections_per_user`` (over a cap it is closed with the
  one-line reason), and one with no channel open for ``unused_timeout`` seconds is
  closed (:mod:`._unused`).
- One session per connection, counted against ``max_sessions`` and, per holder,
  ``max_sessions_per_user``; over a cap the session is a one-line "server full" notice.
  A chat session is given a :class:`~kindlessh._session.SessionDeps`, never the
  :class:`ServerContext`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ._config import Config
from ._enrol import Challenge, Enrolment, SharedInvites
from ._failcount import FailedLogins, count_failures
from ._guard import Guard
from ._guesses import GuessBudget
from ._holders import key_holder, note_signed_keys, shown_holder
from ._invites import Invites
from ._keychoice import KeyChoice
from ._password_login import PasswordLogin
from ._probes import NameProbes
from ._provider import Provider
from ._quota import Quota
from ._refused import RefusedSession
from ._rekeys import Rekeys, count_rekeys
from ._sanitize import sanitize_inline
from ._session import Session, SessionDeps
from ._stall import StallWatch
from ._unused import ChannelWatch, watch_channels

log = logging.getLogger("kindlessh.server")

MAX_USERNAME = 32  # characters in a user name, as in users_dir (and Linux's useradd)
# Seconds the event loop was held up during a login that make a login timeout the
# server's fault, not the client's: a healthy server's loop is late by milliseconds, and
# a login may take 30 s. (:mod:`._stall` sees a stall up to a quarter second short.)
SLOW_LOGIN = 0.5


def username_problem(name: str) -> str | None:
    """Why a user name is refused (one line for the client), or None when it is fine:
    1 to :data:`MAX_USERNAME` characters, all printable (no escapes, no bidi marks)."""
    if not name:
        return "kindlessh: a user name must not be empty"
    if len(name) > MAX_USERNAME:
        return f"kindlessh: a user name has at most {MAX_USERNAME} characters"
    if not name.isprintable() or sanitize_inline(name) != name:
        return "kindlessh: a user name must be printable"
    return None


@dataclass
class ServerContext:
    """What the connections of one server share (the server's own; a chat session is
    given only :attr:`session`)."""

    config: Config
    provider: Provider
    quota: Quota
    guard: Guard
    keys: KeyChoice
    invites: Invites | SharedInvites
    passwords: PasswordLogin
    session: SessionDeps
    probes: NameProbes
    guesses: GuessBudget
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
        self._session_holder: str | None = None
        self._enrol = Enrolment(ctx.invites, ctx.keys.users, budget=ctx.guesses)
        self._password_ok = False
        self._rekeys = Rekeys(ctx.config.server.max_rekeys)
        self._channels: ChannelWatch | None = None
        self._conn_holder: str | None = None  # counted by guard.open_connection
        self._unshare: Callable[[], None] | None = None  # from guard.share_connection
        self._names: set[str] = set()
        self._probing = 0  # login names one too many from this address
        self._personal = False  # the name tried last has its own keys file
        self._signed_key: bytes | None = None  # the key the login was signed with
        self._by_name = False  # logged in by the name's password or invite
        self._holder: str | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        # Through a trusted proxy, the client's address from its PROXY header (._front).
        peer = conn.get_extra_info("peername")
        self._addr = self._enrol.addr = str(peer[0]) if peer else "?"
        proxy = conn.get_extra_info("proxied_by")
        refusal = self.ctx.guard.admit(self._addr)
        if refusal is not None:
            log.debug("dropped a connection from %s: %s", self._addr, refusal)
            # Before the banner: a refused connection costs no key exchange.
            conn.abort()
            return
        self._let_in = True
        self.ctx.connections.add(conn)
        port = f" port {peer[1]}" if peer and len(peer) > 1 else ""
        log.info("connection from %s%s%s", self._addr, port, f" via proxy {proxy}" if proxy else "")
        self._login_timer = asyncio.get_running_loop().call_later(
            self.ctx.config.server.login_timeout, self._login_expired
        )
        count_failures(conn, self._failures, self._too_many)
        count_rekeys(conn, self._rekeys, self._too_many_rekeys)
        self._channels = watch_channels(conn, self.ctx.config.server.unused_timeout, self._unused)
        note_signed_keys(conn, self._signed)

    def _signed(self, key_data: bytes) -> None:
        self._signed_key = key_data

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
        if self._conn_holder is not None:
            self.ctx.guard.close_connection(self._conn_holder)
            self._conn_holder = None
        if self._unshare is not None:
            self._unshare()
            self._unshare = None
        if self._session_holder is not None:
            self.ctx.guard.close_session(self._session_holder)
            self._session_holder = None
        failed = self._failures.failed + self._bad_name + self._probing
        self.ctx.guard.closed(
            self._addr, logged_in=self._logged_in, failed=failed, timed_out=self._timed_out,
            server_slow=self._server_slow,
        )

    def begin_auth(self, username: str) -> bool:
        conn = self._conn
        assert conn is not None
        problem = username_problem(username)
        if problem is not None:
            # Shown only by its length: the name itself may be an escape sequence.
            self._bad_name = True
            conn.set_authorized_keys(None)
            log.info(
                "%s: refused a user name of %d characters: %s",
                self._addr, len(username), problem.removeprefix("kindlessh: "),
            )
            conn.disconnect(asyncssh.DISC_ILLEGAL_USER_NAME, problem)
            return True
        if username not in self._names:
            self._names.add(username)
            if self.ctx.probes.tried(self._addr, username):
                # Probing for names with an invite or a password: a failed login.
                self._probing += 1
                log.info("%s: tried more than %d login names lately",
                         self._addr, self.ctx.probes.limit)
        self._password_ok = self.ctx.passwords.asks(username)
        self._enrol.begin(username)
        choice = self.ctx.keys.choose(username, invite_pending=self._enrol.open)
        self._personal = choice.personal
        self._signed_key = None
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
        ok = await self.ctx.passwords.check(username, password, addr=self._addr)
        self._by_name = self._by_name or ok
        return ok

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
        self._by_name = self._by_name or reply.accepted
        return reply.accepted

    def auth_completed(self) -> None:
        assert self._conn is not None
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self._logged_in = True
        self.ctx.guard.logged_in(self._addr)
        self._rekeys.logged_in()
        username = str(self._conn.get_extra_info("username"))
        if self._personal or self._by_name or self._signed_key is None:
            self._holder = username
        else:
            self._holder = key_holder(self._signed_key)
        held = "" if self._holder == username else f" as {shown_holder(self._holder)}"
        shown = sanitize_inline(username)
        full = self.ctx.guard.open_connection(self._holder, username)
        if full is not None:
            log.info("%s from %s: %s", shown, self._addr, full)
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"kindlessh: {full}")
            return
        self._conn_holder = self._holder
        self._unshare = self.ctx.guard.share_connection(self._holder, username, self._full)
        log.info("%s logged in from %s%s", shown, self._addr, held)
        if self._channels is not None:
            self._channels.start()

    def _full(self, line: str) -> None:
        """Over the per-holder cap of every worker together: close with ``line``."""
        log.info("%s: %s", self._addr, line)
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"kindlessh: {line}")

    def session_requested(self) -> Any:
        assert self._conn is not None
        if self._sessions:
            return False  # one chat per connection
        self._sessions += 1
        # The name as typed: begin_auth refused any that is too long or unprintable.
        username = str(self._conn.get_extra_info("username") or "you")
        holder = self._holder or username
        full = self.ctx.guard.open_session(holder, username)
        if full is not None:
            log.info("%s from %s: %s", sanitize_inline(username), self._addr, full)
            return RefusedSession(full)
        self._session_holder = holder
        key_env = self._conn.get_key_option("environment", {})
        env = {str(k): str(v) for k, v in key_env.items()} if isinstance(key_env, dict) else {}
        env.update(self._enrol.env)  # the invite's profile, for this first login too
        return Session(
            self.ctx.session, username, env, greeting=self._enrol.greeting, holder=holder
        )
