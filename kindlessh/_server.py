"""The SSH server: listening, authentication and connection policy (asyncssh).

Contract:
- :func:`start_server` loads (or creates) the host keys, binds, and returns a running
  :class:`Server`; ``await server.close()`` stops listening, ends every session and
  closes the upstream client.
- Host keys: Ed25519, plus RSA 3072 for clients without Ed25519 (Dropbear before
  2020.79); RSA signs with rsa-sha2-256/512 only, never SHA-1 ssh-rsa.
- Public-key authentication (and invite codes, below; and passwords, only with
  ``[server] password_auth`` on and only for names that have one). A user name with a file
  under ``[server] users_dir`` logs in with that file's keys alone; any other name with
  a key from ``[server] authorized_keys``, the SSH username naming the account. Both
  are re-read when they change. With no keys at all the server still runs, refuses
  everyone, and its auth banner says how the owner adds a key (not to a name with an
  invite pending). A user name with unprintable characters is
  refused (asyncssh already refuses control characters and names of 1 KiB or more);
  logs and screens show at most 32 characters of any name, sanitised.
- Pairing: while ``kindlessh invite NAME`` has an invite pending, a login as NAME with
  an unknown key is asked for the code (keyboard-interactive, at most 3 tries, each
  wrong one a failed login for the policy below); the right code registers the first
  key the client offered for NAME (with the invite's profile) and the chat opens with a
  line saying so. With no invite pending, keyboard-interactive is not offered at all. A
  client that offered no key is told how to make one and disconnected. The code is what
  authorises the key: SSH clients name a key before signing with it, and a refused key
  is never signed, so the key is registered as offered; only a device holding its
  private key can log in with it afterwards.
- Connection policy (:mod:`._guard`): a connection refused by the startup limits or a
  penalty is dropped before the SSH banner; one not logged in after ``login_timeout``
  is cut; the ``max_auth_tries``-th failed login ends the connection.
- One session per connection, counted against ``max_sessions`` and
  ``max_sessions_per_user``; over a cap the session is a one-line "server full" notice.
  No forwarding, agent, X11, SFTP or SCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncssh
from asyncssh.kex import get_default_kex_algs
from asyncssh.public_key import get_default_public_key_algs

from ._channel import ChatSession
from ._config import Config
from ._conversation import Conversation, GenerationSettings
from ._errors import UserError
from ._gemini import GeminiProvider
from ._guard import Guard
from ._hub import Hub
from ._invites import Invite, Invites
from ._keys import (
    AuthorizedKeys,
    HostKey,
    load_or_create_host_key,
    load_or_create_rsa_host_key,
)
from ._pace import Pace
from ._paint import skip_unchanged_rows
from ._passwords import Passwords
from ._provider import Provider
from ._quota import Quota
from ._refused import RefusedSession
from ._retry import RetryPolicy
from ._sanitize import sanitize_inline
from ._store import Store
from ._users import KeyEntry, Users, valid_name

log = logging.getLogger("kindlessh.server")

MAX_CODE_TRIES = 3
GONE = (
    "kindlessh: the invite for {name} has expired or was cancelled; ask the owner "
    "for a new one"
)
NO_CLIENT_KEY = (
    "kindlessh: an invite is waiting for you, but your SSH client offered no key to "
    "register. Make one, then connect again:\n"
    "  Dropbear: dropbearkey -t ed25519 -f ~/.ssh/id_dropbear\n"
    "  OpenSSH:  ssh-keygen -t ed25519"
)

NO_KEYS_BANNER = (
    "kindlessh: no keys are authorized on this server yet. The owner adds your public key "
    "(one line from ~/.ssh/id_ed25519.pub) to the authorized_keys file named in its "
    "config; no restart is needed.\r\n"
)
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
    """What every connection of one server shares."""

    config: Config
    provider: Provider
    authorized: AuthorizedKeys
    generation: GenerationSettings
    retry: RetryPolicy
    hub: Hub
    quota: Quota
    users: Users
    guard: Guard
    sessions: set[ChatSession] = field(default_factory=set)
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    pace: Pace = field(default_factory=Pace)


class KindleSSHServer(asyncssh.SSHServer):
    """Per-connection policy: admission, authentication and the one session."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._conn: asyncssh.SSHServerConnection | None = None
        self._addr = "?"
        self._let_in = False
        self._logged_in = False
        self._timed_out = False
        self._replies = 0  # userauth failure replies sent
        self._bad_name = False
        self._login_timer: asyncio.TimerHandle | None = None
        self._sessions = 0
        self._session_user: str | None = None
        # Enrolment by invite code (see begin_auth and the kbdint methods).
        self._invite: Invite | None = None
        self._offered: list[asyncssh.SSHKey] = []
        self._code_tries = 0
        self._greeting: str | None = None
        self._password_ok = False
        self._refusal: str | None = None  # why keyboard-interactive cannot go on
        self._enrolled_env: dict[str, str] = {}

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._addr = str(peer[0]) if peer else "?"
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
        self._count_failures(conn)

    def _count_failures(self, conn: asyncssh.SSHServerConnection) -> None:
        """Cut the connection at the ``max_auth_tries``-th failed login.

        Strategy: asyncssh has no hook for a failed attempt (a refused method never
        reaches this class), but every failure, whatever the method, is answered by
        ``send_userauth_failure``; wrapping it on this connection counts them all. The
        first answer is free: clients open with a ``none`` request to learn the methods
        (OpenSSH does not count it either).
        """
        limit = self.ctx.config.server.max_auth_tries
        reply = conn.send_userauth_failure

        def counted(partial_success: bool) -> None:
            self._replies += 1
            if self._replies - 1 >= limit:
                log.info("%s: %d failed logins; disconnecting", self._addr, limit)
                conn.disconnect(
                    asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                    "Too many authentication failures",
                )
                return
            reply(partial_success)

        # setattr: mypy refuses an assignment to a method, even on an instance.
        setattr(conn, "send_userauth_failure", counted)  # noqa: B010

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
        failed = max(0, self._replies - 1) + self._bad_name
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
        self._invite = None
        self._offered = []
        self._password_ok = self.ctx.config.server.password_auth and Passwords(
            self.ctx.config.server.users_dir
        ).has(username)
        if valid_name(username):
            invites = Invites.beside(self.ctx.config.server.users_dir)
            try:
                self._invite = invites.pending(username, datetime.now(UTC))
            except UserError as exc:
                log.warning("%s", exc)
        user_keys = self.ctx.users.authorized(username)
        if user_keys is not None:
            # The name is a user's: only that user's keys may log in as it.
            keys = user_keys.get()
            if keys is None and user_keys.error:
                log.warning("%s", user_keys.error)
        else:
            keys = self.ctx.authorized.get()
            if keys is None and not self.ctx.users.names() and self._invite is None:
                conn.send_auth_banner(NO_KEYS_BANNER)
        # Always set, even to None: keys chosen for an earlier name must not carry over.
        conn.set_authorized_keys(keys)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Called for a key that is not authorized: with an invite pending for the name,
        remember the first keys offered, to register one once the code is typed."""
        known = {k.public_data for k in self._offered}
        # Dropbear offers its default key again when -i names the same file.
        if self._invite is not None and len(known) < 16 and key.public_data not in known:
            self._offered.append(key)
        return False

    def password_auth_supported(self) -> bool:
        # Only when the owner turned passwords on, and only for a name that has one:
        # nobody else is ever asked, so there is nothing to guess.
        return self._password_ok

    async def validate_password(self, username: str, password: str) -> bool:
        passwords = Passwords(self.ctx.config.server.users_dir)
        # scrypt takes a few tens of milliseconds: off the event loop.
        ok = await asyncio.to_thread(passwords.check, username, password)
        if ok:
            log.info("%s: password accepted for %s", self._addr, username)
        return ok

    def kbdint_auth_supported(self) -> bool:
        # Offered only while an invite is pending for the name: nothing else is ever
        # asked by keyboard, so no password can be guessed here.
        return self._invite is not None and self._code_tries < MAX_CODE_TRIES

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, tuple[tuple[str, bool], ...]]:
        # Asked again: the invite may have expired or been revoked since begin_auth.
        self._refusal = None
        if not self._offered:
            self._refusal = NO_CLIENT_KEY
        elif self._pending(username) is None:
            self._refusal = GONE.format(name=username)
        if self._refusal is not None:
            return ("", self._refusal + "\n", "", ())
        fingerprint = self._offered[0].get_fingerprint()
        # No name, and the instruction ends its own line: dbclient prints both as they
        # are, with no line break after either.
        return (
            "",
            f"To register this device's key ({fingerprint}) for {username}:\n",
            "",
            ((f"Invite code for {username}: ", True),),
        )

    def _pending(self, username: str) -> Invite | None:
        invites = Invites.beside(self.ctx.config.server.users_dir)
        try:
            return invites.pending(username, datetime.now(UTC))
        except UserError as exc:
            log.warning("%s", exc)
            return None

    def _refuse(self, reason: str) -> bool:
        """End the connection with ``reason`` (one line, shown by the client)."""
        assert self._conn is not None
        self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, reason)
        return False

    async def validate_kbdint_response(self, username: str, responses: Any) -> bool:
        if self._refusal == NO_CLIENT_KEY:
            return self._refuse(
                "kindlessh: no key offered; make one (ssh-keygen -t ed25519 or "
                "dropbearkey -t ed25519 -f ~/.ssh/id_dropbear) and connect again"
            )
        if self._refusal is not None:
            return self._refuse(self._refusal)
        if len(responses) != 1:
            return False
        self._code_tries += 1
        invites = Invites.beside(self.ctx.config.server.users_dir)
        key = self._offered[0]

        def enrol(invite: Invite) -> None:
            entry = KeyEntry.parse(key.export_public_key().decode().strip(), "the offered key")
            self.ctx.users.add(username, [entry], invite.profile)

        try:
            # scrypt takes a few tens of milliseconds, and the key file is written:
            # off the event loop. The invite is used up only once the key is stored.
            outcome, invite = await asyncio.to_thread(
                invites.redeem, username, str(responses[0]), datetime.now(UTC), enrol
            )
        except UserError as exc:
            log.error("could not register a key for %s: %s", username, exc)
            return self._refuse(
                "kindlessh: the server could not register your key; the invite still "
                "stands (the owner can see why in its log)"
            )
        if outcome == "gone":
            return self._refuse(GONE.format(name=username))
        if outcome == "wrong" or invite is None:
            log.info("%s: wrong invite code for %s (try %d)", self._addr, username,
                     self._code_tries)
            if self._code_tries >= MAX_CODE_TRIES:
                return self._refuse("kindlessh: too many wrong invite codes")
            return False
        self._enrolled(username, key, invite)
        return True

    def _enrolled(self, username: str, key: asyncssh.SSHKey, invite: Invite) -> None:
        fingerprint = key.get_fingerprint()
        log.info("registered key %s for %s from %s (invite)", fingerprint, username, self._addr)
        others = len(self._offered) - 1
        extra = (
            f" Your device offered {others + 1} keys; the first one was registered."
            if others
            else ""
        )
        self._greeting = (
            f"Your key {fingerprint} is now registered for {username}: next time it logs "
            f"in by itself.{extra}"
        )
        if invite.profile:
            self._enrolled_env = {"KINDLESSH_PROFILE": invite.profile}

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
        env.update(self._enrolled_env)  # the invite's profile, for this first login too
        return ChatSession(self.ctx, username, env, greeting=self._greeting)


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
    ctx = ServerContext(
        config=config,
        provider=provider or GeminiProvider(gemini),
        authorized=AuthorizedKeys(config.server.authorized_keys),
        users=Users(config.server.users_dir),
        guard=Guard(config.server),
        generation=GenerationSettings(
            system_instruction=gemini.system_instruction,
            temperature=gemini.temperature,
            max_output_tokens=gemini.max_output_tokens,
            max_prompt_chars=config.chat.max_prompt_chars,
        ),
        retry=gemini.retry,
        quota=quota,
        hub=Hub(
            store,
            lambda user: Conversation(
                ctx.provider, ctx.generation, ctx.retry, quota=ctx.quota.of(user)
            ),
            quota=quota,
            commit_interval=config.storage.commit_interval_ms / 1000,
            finish_on_disconnect=config.chat.finish_on_disconnect,
            export_dir=config.storage.export_dir,
        ),
    )
    try:
        acceptor = await _listen(ctx, [k for k in (host_key, rsa_host_key) if k is not None])
    except BaseException:
        await store.close()
        raise
    # Strategy: what imports and start-up made (rich, pygments, asyncssh and prompt-toolkit
    # tables) lives as long as the process. Frozen out of the collector, a full
    # collection under load scans only the sessions' objects: without this, each one
    # took 40-60 ms here, long enough to delay a keystroke's echo visibly. Once per
    # process: the first server's start-up is what matters.
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
        # Collections of the youngest objects every 10,000 allocations instead of 700: a
        # hundred streaming sessions allocate fast, and every tenth of every tenth of
        # those collections was a full one taking up to 230 ms (bench/load.py).
        gc.set_threshold(10_000, 10, 10)
    skip_unchanged_rows()
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
