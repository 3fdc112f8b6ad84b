"""The SSH server: listening, and the asyncssh adapter that hands each decision on.

Contract:
- :func:`start_server` loads (or creates) the host keys, binds, and returns a running
  :class:`Server`; ``await server.close()`` stops listening, ends every session and
  closes the upstream client. It changes nothing process-wide: the collector and
  painting tuning is :func:`kindlessh._process.tune_process`, called by ``kindlessh
  serve``.
- Host keys: Ed25519, plus RSA 3072 for clients without Ed25519 (Dropbear before
  2020.79); RSA signs with rsa-sha2-256/512 only, never SHA-1 ssh-rsa.
- :class:`KindleSSHServer` is asyncssh's per-connection callback object and decides
  nothing itself: which keys apply to a name is :mod:`._keychoice` (a user's file or the
  shared ``authorized_keys``, re-read when they change; with no keys at all the server
  still runs, refuses everyone, and its auth banner says how the owner adds a key);
  pairing a device by invite code over keyboard-interactive is :mod:`._enrol` (not
  offered at all with no invite pending); passwords, only with ``[server]
  password_auth`` on and only for names that have one, are :mod:`._password_login`;
  counting failed logins is :mod:`._failcount`; admission and penalties are
  :mod:`._guard`. Invites and passwords are read through one object per server.
- A user name with unprintable characters is refused (asyncssh already refuses control
  characters and names of 1 KiB or more); logs and screens show at most 32 characters
  of any name, sanitised.
- Connection policy (:mod:`._guard`): a connection refused by the startup limits or a
  penalty is dropped before the SSH banner; one not logged in after ``login_timeout``
  is cut; the ``max_auth_tries``-th failed login ends the connection.
- One session per connection, counted against ``max_sessions`` and
  ``max_sessions_per_user``; over a cap the session is a one-line "server full" notice.
  A chat session is given a :class:`~kindlessh._channel.SessionDeps`, never the
  :class:`ServerContext`. No forwarding, agent, X11, SFTP or SCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.kex import get_default_kex_algs
from asyncssh.public_key import get_default_public_key_algs

from ._channel import ChatSession, SessionDeps
from ._config import Config
from ._conversation import Conversation, GenerationSettings
from ._enrol import Challenge, Enrolment
from ._failcount import FailedLogins, count_failures
from ._gemini import GeminiProvider, setup_notice
from ._guard import Guard
from ._hub import Hub
from ._invites import Invites
from ._keychoice import KeyChoice
from ._keys import (
    AuthorizedKeys,
    HostKey,
    load_or_create_host_key,
    load_or_create_rsa_host_key,
)
from ._pace import Pace
from ._password_login import PasswordLogin
from ._passwords import Passwords
from ._provider import Provider
from ._quota import Quota
from ._refused import RefusedSession
from ._sanitize import sanitize_inline
from ._store import Store
from ._users import Users

log = logging.getLogger("kindlessh.server")

MAX_USERNAME = 32  # characters of a user name shown in logs and on screen


def acceptable_username(name: str) -> bool:
    """A user name we accept: not empty, and printable (no escapes, no bidi marks).

    Strategy: longer names are accepted and cut for display, as before; the account is
    the sanitised name, which can never equal a ``users_dir`` name unless it is one.
    """
    return bool(name) and name.isprintable()


def kex_algorithms() -> list[str]:
    """asyncssh's key exchange list with ``curve25519-sha256`` first.

    Strategy: Dropbear clients send a guessed first KEX packet for their first algorithm;
    asyncssh judges that guess by the *chosen* algorithm, not by the two first choices as
    RFC 4253 §7.1 says, and drops the connection when its own first choice (an ML-KEM
    hybrid) is one Dropbear lacks. With curve25519 first both readings agree. OpenSSH
    clients still get their own first choice, since the client's order decides.
    """
    algs = [a.decode() for a in get_default_kex_algs() if not a.startswith(b"gss-")]
    preferred = "curve25519-sha256"
    if preferred in algs:
        algs.remove(preferred)
        algs.insert(0, preferred)
    return algs


def signature_algorithms() -> list[str]:
    """asyncssh's signature list with RSA limited to rsa-sha2-256/512.

    Drops SHA-1 ``ssh-rsa`` and the ``ssh-rsa-sha*@ssh.com`` variants. On a server this
    is what the ``server-sig-algs`` extension tells clients; the host key's own
    algorithms are limited in :attr:`HostKey.keypair`.
    """
    return [a.decode() for a in get_default_public_key_algs() if not a.startswith(b"ssh-rsa")]


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

    @property
    def hub(self) -> Hub:
        """The conversations (the sessions' hub)."""
        return self.session.hub

    @property
    def pace(self) -> Pace:
        """The pacing of screen updates (the sessions' pace)."""
        return self.session.pace

    @property
    def sessions(self) -> set[ChatSession]:
        """The open chat sessions."""
        return self.session.sessions

    @property
    def authorized(self) -> AuthorizedKeys:
        """The shared ``authorized_keys`` file."""
        return self.keys.authorized

    @property
    def users(self) -> Users:
        """The per-user key files."""
        return self.keys.users


class KindleSSHServer(asyncssh.SSHServer):
    """One connection: asyncssh's callbacks, each handed to the unit that decides."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._conn: asyncssh.SSHServerConnection | None = None
        self._addr = "?"
        self._let_in = False
        self._logged_in = False
        self._timed_out = False
        self._failures = FailedLogins(ctx.config.server.max_auth_tries)
        self._bad_name = False
        self._login_timer: asyncio.TimerHandle | None = None
        self._sessions = 0
        self._session_user: str | None = None
        self._enrol = Enrolment(ctx.invites, ctx.users)
        self._password_ok = False

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

    def _too_many(self) -> None:
        log.info("%s: %d failed logins; disconnecting", self._addr, self._failures.limit)

    def _login_expired(self) -> None:
        self._login_timer = None
        self._timed_out = True
        timeout = self.ctx.config.server.login_timeout
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
        if self._conn is not None:
            self.ctx.connections.discard(self._conn)
        if self._session_user is not None:
            self.ctx.guard.close_session(self._session_user)
            self._session_user = None
        failed = self._failures.failed + self._bad_name
        self.ctx.guard.closed(
            self._addr, logged_in=self._logged_in, failed=failed, timed_out=self._timed_out
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
        user = sanitize_inline(str(self._conn.get_extra_info("username")), MAX_USERNAME)
        log.info("%s logged in from %s", user, self._addr)

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
        return ChatSession(self.ctx.session, username, env, greeting=self._enrol.greeting)


class Server:
    """A running kindlessh server."""

    def __init__(
        self,
        acceptor: asyncssh.SSHAcceptor,
        ctx: ServerContext,
        host_key: HostKey,
        rsa_host_key: HostKey | None = None,
    ) -> None:
        self._acceptor = acceptor
        self.ctx = ctx
        self.host_key = host_key
        self.rsa_host_key = rsa_host_key

    @property
    def host_keys(self) -> list[HostKey]:
        """Every host key offered, Ed25519 first."""
        return [k for k in (self.host_key, self.rsa_host_key) if k is not None]

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        return int(self._acceptor.get_port())

    async def close(self) -> None:
        """Stop listening, end all sessions and close the upstream client."""
        self._acceptor.close()
        self.ctx.hub.stop_answers()
        for session in list(self.ctx.sessions):
            session.shutdown()
        for conn in list(self.ctx.connections):
            conn.close()
        for conn in list(self.ctx.connections):
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 5)
        with contextlib.suppress(TimeoutError):
            # Python 3.12+ waits here for every connection to be gone.
            await asyncio.wait_for(self._acceptor.wait_closed(), 5)
        # Answers still coming are stopped and saved as they stand, marked interrupted.
        await self.ctx.hub.aclose()
        await self.ctx.pace.aclose()
        closer = getattr(self.ctx.provider, "aclose", None)
        if closer is not None:
            await closer()


async def start_server(config: Config, *, provider: Provider | None = None) -> Server:
    """Start listening as ``config`` says.

    Args:
        config: the loaded configuration.
        provider: the model API to use (default: Gemini as configured).

    Raises:
        ConfigError: the host key cannot be used.
        OSError: the address cannot be bound.
    """
    host_key = load_or_create_host_key(config.server.host_key)
    # A host_key that is itself RSA needs no second one (asyncssh refuses two of a type).
    rsa_host_key = (
        None if host_key.label == "RSA" else load_or_create_rsa_host_key(config.server.host_key)
    )
    gemini = config.gemini
    store = await Store.open(config.storage.path)
    recovered = await store.recover_interrupted()
    if recovered:
        log.info("%d answer(s) cut off by the last stop are stored as interrupted", recovered)
    quota = Quota(config.quota, store)
    upstream = provider or GeminiProvider(gemini)
    generation = GenerationSettings(
        system_instruction=gemini.system_instruction,
        temperature=gemini.temperature,
        max_output_tokens=gemini.max_output_tokens,
        max_prompt_chars=config.chat.max_prompt_chars,
    )
    retry = gemini.retry
    hub = Hub(
        store,
        lambda user: Conversation(upstream, generation, retry, quota=quota.of(user)),
        quota=quota,
        commit_interval=config.storage.commit_interval_ms / 1000,
        finish_on_disconnect=config.chat.finish_on_disconnect,
        export_dir=config.storage.export_dir,
    )
    srv = config.server
    ctx = ServerContext(
        config=config,
        provider=upstream,
        quota=quota,
        guard=Guard(srv),
        keys=KeyChoice(Users(srv.users_dir), AuthorizedKeys(srv.authorized_keys)),
        invites=Invites.beside(srv.users_dir),
        passwords=PasswordLogin(Passwords(srv.users_dir), enabled=srv.password_auth),
        session=SessionDeps(
            hub=hub,
            pace=Pace(),
            ui=config.ui,
            idle_timeout=srv.idle_timeout,
            max_write_buffer=srv.max_write_buffer,
            notices=tuple(n for n in [setup_notice(gemini)] if n is not None),
        ),
    )
    try:
        acceptor = await _listen(ctx, [k for k in (host_key, rsa_host_key) if k is not None])
    except BaseException:
        await store.close()
        raise
    ctx.pace.start()
    return Server(acceptor, ctx, host_key, rsa_host_key)


async def _listen(ctx: ServerContext, host_keys: list[HostKey]) -> asyncssh.SSHAcceptor:
    srv = ctx.config.server
    return await asyncssh.listen(
        srv.host,
        srv.port,
        server_factory=lambda: KindleSSHServer(ctx),
        server_host_keys=[k.keypair for k in host_keys],
        kex_algs=kex_algorithms(),
        signature_algs=signature_algorithms(),
        line_editor=False,
        encoding="utf-8",
        errors="replace",
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        gss_host=None,
        # KindleSSHServer enforces login_timeout itself (to know which connections it
        # cut); asyncssh's own timer is only a backstop.
        login_timeout=srv.login_timeout * 2,
        keepalive_interval=srv.keepalive_interval,
        keepalive_count_max=srv.keepalive_count_max,
        server_version="kindlessh",
    )
