"""The SSH server: host keys, listening, and stopping.

Contract:
- :func:`start_server` loads (or creates) the host keys, binds, and returns a running
  :class:`Server`; ``await server.close()`` stops listening, ends every session and
  closes the upstream client. It changes nothing process-wide: the collector and
  painting tuning is :func:`kindlessh._process.tune_process`, called by ``kindlessh
  serve``.
- Host keys: Ed25519, plus RSA 3072 for clients without Ed25519 (Dropbear before
  2020.79); RSA signs with rsa-sha2-256/512 only, never SHA-1 ssh-rsa.
- Every connection passes :mod:`._front` first (the PROXY protocol from
  ``[server] proxy_from``, refused from anyone else).
- Each connection is a :class:`~kindlessh._connection.Connection` over one shared
  :class:`~kindlessh._connection.ServerContext`. No forwarding, agent, X11, SFTP or SCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import asyncssh
from asyncssh.kex import get_default_kex_algs
from asyncssh.public_key import get_default_public_key_algs

from ._config import Config, parse_networks
from ._connection import Connection, ServerContext
from ._conversation import Conversation, GenerationSettings
from ._errors import ConfigError
from ._front import Front
from ._guard import Guard
from ._guesses import GuessBudget
from ._hub import Hub
from ._invites import Invites
from ._keychoice import KeyChoice
from ._keys import (
    AuthorizedKeys,
    HostKey,
    load_or_create_host_key,
    load_or_create_rsa_host_key,
)
from ._models import Models
from ._pace import Pace
from ._password_login import PasswordLogin
from ._passwords import Passwords
from ._probes import NameProbes
from ._provider import Provider
from ._quota import Quota
from ._session import SessionDeps
from ._shared_accounts import SharedAccounts
from ._shared_limits import SharedLimits
from ._store import Store, open_store
from ._users import Users

log = logging.getLogger("kindlessh.server")

# Key exchanges offered: elliptic curves and ML-KEM hybrids only, as OpenSSH 10's sshd.
# Measured on loopback (client and server in one process, per exchange): curve25519
# 1.7 ms, ML-KEM768x25519 2.9 ms, nistp521 2.6 ms; finite-field DH group16 8.1 ms and
# group18 31 ms, group exchange as costly as the group the client asks for (up to 8192
# bits), rsa2048-sha256 50 ms (a new RSA key every time). The costly ones would let a
# client with no key buy seconds of the event loop; every client we serve (OpenSSH,
# Dropbear since 2013.61, PuTTY since 0.68) has curve25519.
_CHEAP_KEX = ("mlkem", "curve25519-", "curve448-", "ecdh-sha2-nistp")


def kex_algorithms() -> list[str]:
    """asyncssh's key exchanges, the cheap ones only (see ``_CHEAP_KEX``), with
    ``curve25519-sha256`` first.

    Strategy: Dropbear clients send a guessed first KEX packet for their first algorithm;
    asyncssh judges that guess by the *chosen* algorithm, not by the two first choices as
    RFC 4253 §7.1 says, and drops the connection when its own first choice (an ML-KEM
    hybrid) is one Dropbear lacks. With curve25519 first both readings agree. OpenSSH
    clients still get their own first choice, since the client's order decides.
    """
    algs = [
        a.decode() for a in get_default_kex_algs() if a.decode().startswith(_CHEAP_KEX)
    ]
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
        self.ctx.stall.stop()
        self.ctx.session.hub.stop_answers()
        for session in list(self.ctx.session.sessions):
            session.shutdown()
        for conn in list(self.ctx.connections):
            conn.close()
        for conn in list(self.ctx.connections):
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 5)
        with contextlib.suppress(TimeoutError):
            # Python 3.12+ waits here for every connection to be gone.
            await asyncio.wait_for(self._acceptor.wait_closed(), 5)
        if isinstance(self.ctx.invites, SharedAccounts):
            await self.ctx.invites.close()
        if self.ctx.quota.shared is not None:
            # Before the store closes: this worker's claims are deleted, not left to lapse.
            await self.ctx.quota.shared.close()
        # Answers still coming are stopped and saved as they stand, marked interrupted.
        await self.ctx.session.hub.aclose()
        await self.ctx.session.pace.aclose()
        self.ctx.guesses.close()
        if self.ctx.session.hub.models is not None:
            await self.ctx.session.hub.models.aclose()


def load_host_keys(config: Config) -> tuple[HostKey, HostKey | None]:
    """The host keys ``config`` names, made on first use: Ed25519 and RSA.

    Raises:
        ConfigError: a host key cannot be used.
    """
    host_key = load_or_create_host_key(config.server.host_key)
    # A host_key that is itself RSA needs no second one (asyncssh refuses two of a type).
    rsa_host_key = (
        None if host_key.label == "RSA" else load_or_create_rsa_host_key(config.server.host_key)
    )
    return host_key, rsa_host_key


async def start_server(
    config: Config,
    *,
    provider: Provider | None = None,
    sock: socket.socket | None = None,
    host_keys: tuple[HostKey, HostKey | None] | None = None,
) -> Server:
    """Start listening as ``config`` says.

    Args:
        config: the loaded configuration.
        provider: the model API to use (default: Gemini as configured).
        sock: a bound, listening socket to serve on instead of ``[server] host`` and
            ``port`` (a worker's, from :mod:`._workers`).
        host_keys: the host keys, already loaded (default: :func:`load_host_keys`).

    Raises:
        ConfigError: the host key cannot be used.
        OSError: the address cannot be bound.
    """
    host_key, rsa_host_key = host_keys if host_keys is not None else load_host_keys(config)
    gemini = config.gemini
    store = await open_store(config.storage)
    recovered = await store.recover_interrupted()
    if recovered:
        log.info("%d answer(s) cut off by the last stop are stored as interrupted", recovered)
    shared = _shared_limits(store)
    try:
        accounts = await _shared_accounts(store)
    except BaseException:
        await store.close()
        raise
    quota = Quota(config.quota, store, shared)
    models = Models(config, provider=provider)
    upstream = models.get(models.default)
    if upstream is None:  # load_config keeps default_model among the entries
        raise ConfigError(f"no model entry named {models.default!r}")
    generation = GenerationSettings(
        system_instruction=config.chat.system_prompt,
        search=gemini.google_search,
        temperature=gemini.temperature,
        max_output_tokens=gemini.max_output_tokens,
        max_prompt_chars=config.chat.max_prompt_chars,
        max_answer_chars=config.chat.max_answer_chars,
    )
    retry = gemini.retry
    hub = Hub(
        store,
        lambda user: Conversation(
            upstream, generation, retry, quota=quota.of(user), entry=models.default
        ),
        quota=quota,
        commit_interval=config.storage.commit_interval_ms / 1000,
        finish_on_disconnect=config.chat.finish_on_disconnect,
        export_dir=config.storage.export_dir,
        models=models,
        follow_check=config.storage.follow_check_ms / 1000,
        shared=bool(config.storage.url),
    )
    srv = config.server
    guard = Guard(srv)
    guard.shared = shared
    guesses = GuessBudget(srv.password_checks_per_second)
    ctx = ServerContext(
        config=config,
        provider=upstream,
        quota=quota,
        guard=guard,
        keys=KeyChoice(Users(srv.users_dir), AuthorizedKeys(srv.authorized_keys), accounts),
        invites=accounts if accounts is not None else Invites.beside(srv.users_dir),
        passwords=PasswordLogin(
            Passwords(srv.users_dir), enabled=srv.password_auth, budget=guesses
        ),
        session=SessionDeps(
            hub=hub,
            pace=Pace(),
            ui=config.ui,
            idle_timeout=srv.idle_timeout,
            max_write_buffer=srv.max_write_buffer,
            max_resize_rate=srv.max_resize_rate,
            max_resize_burst=srv.max_resize_burst,
            notices=models.notices,
            seat=guard.seat if shared is not None else None,
        ),
        probes=NameProbes(srv.max_names_per_source),
        guesses=guesses,
    )
    try:
        await hub.start()
        acceptor = await _listen(
            ctx, [k for k in (host_key, rsa_host_key) if k is not None], sock
        )
    except BaseException:
        # Nothing of a server that could not start stays open.
        if accounts is not None:
            await accounts.close()
        await store.close()
        guesses.close()
        await models.aclose()
        raise
    ctx.session.pace.start()
    ctx.stall.start()
    return Server(acceptor, ctx, host_key, rsa_host_key)


async def _shared_accounts(store: Store) -> SharedAccounts | None:
    """Invites and enrolled keys in the database, when the store is one every machine
    shares (else they are files beside ``users_dir``)."""
    from ._pg_store import PostgresStore

    if not isinstance(store, PostgresStore):
        return None
    return await SharedAccounts.start(store.url, store.pool)


def _shared_limits(store: Store) -> SharedLimits | None:
    """The limits every worker shares, when the store is one they can share."""
    from ._pg_store import PostgresStore

    if not isinstance(store, PostgresStore):
        return None
    return SharedLimits(store.pool, store.owner, store.live_owners)


async def _listen(
    ctx: ServerContext, host_keys: list[HostKey], sock: socket.socket | None
) -> asyncssh.SSHAcceptor:
    srv = ctx.config.server
    front = Front(parse_networks(srv.proxy_from), srv.proxy_timeout, sock)
    return await asyncssh.listen(
        srv.host,
        srv.port,
        tunnel=front,
        server_factory=lambda: Connection(ctx),
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
        # Connection enforces login_timeout itself (to know which connections it
        # cut); asyncssh's own timer is only a backstop.
        login_timeout=srv.login_timeout * 2,
        keepalive_interval=srv.keepalive_interval,
        keepalive_count_max=srv.keepalive_count_max,
        server_version="kindlessh",
    )
