"""Invites and the keys they enrol, in PostgreSQL: one set for every worker and machine.

Contract:
- With ``[storage] url`` set, pending invites live in the ``invites`` table and the keys
  they enrolled in ``enrolled_keys`` (migration ``m009_accounts``), instead of
  ``invites.json`` and the per-user files under ``users_dir``. Invites behave as
  :class:`~kindlessh._invites.Invites` does: one pending per name (a new one replaces
  it), expiry, codes shown once and stored as salted scrypt hashes, checked in constant
  time outside any lock; a name without an invite costs the same scrypt.
- :meth:`SharedAccounts.redeem_key` consumes the invite and stores the key in one
  transaction (``DELETE ... WHERE name AND salt RETURNING``: the salt names the invite),
  so a code works once across every machine, and a key that cannot be stored leaves the
  invite standing.
- Every change sends ``NOTIFY kindlessh_accounts, '<name>'`` in its transaction. Each
  server keeps an in-memory mirror of both tables, loaded at start (and again whenever
  its listening connection had to be made anew) and refreshed per name on each notice,
  so that the SSH callbacks that must answer at once (:meth:`pending`,
  :meth:`any_pending`, :meth:`keys`) read memory, never the database.
- The row functions (:func:`create_invite`, :func:`revoke_invite`, :func:`list_invites`,
  :func:`enrolled`, :func:`remove_keys`) are what ``kindlessh invite`` and ``kindlessh
  user`` run on a connection of their own (:func:`run`).
- A database that cannot be reached raises :class:`~kindlessh._errors.UserError` from
  the commands, :class:`~kindlessh._errors.StoreError` at a server's start; a server
  whose listening connection drops logs it and makes it again.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar, cast

import asyncssh
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ._errors import StoreError, UserError
from ._guesses import GuessBudget
from ._invites import Invite, Redeemed, _hash, new_code, normalise
from ._migrations import migrate_postgres
from ._pg_store import CONNECT_TIMEOUT, describe, explain
from ._users import KeyEntry

log = logging.getLogger("kindlessh.server")

T = TypeVar("T")
Conn = AsyncConnection[tuple[object, ...]]

CHANNEL = "kindlessh_accounts"
RETRY_SECONDS = 1.0  # between attempts to make the listening connection again

_INVITE_COLUMNS = "name, salt, hash, profile, created_at, expires_at"


@dataclass(frozen=True)
class _Pending:
    """A pending invite with what checks its code."""

    invite: Invite
    salt: bytes
    hash: bytes


def _pending(row: tuple[object, ...]) -> _Pending:
    name, salt, digest, profile, created, expires = row
    invite = Invite(
        str(name), cast("str | None", profile), cast(datetime, created),
        cast(datetime, expires),
    )  # fmt: skip
    return _Pending(invite, bytes(cast(bytes, salt)), bytes(cast(bytes, digest)))


async def _notify(conn: Conn, name: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, name))


# ----- rows (the command line's and the server's) -------------------------------------------


async def connect(url: str) -> Conn:
    """A connection to ``url`` with the schema up to date (for the command line).

    Raises:
        UserError: the database cannot be reached or migrated.
    """
    try:
        conn = await AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise UserError(explain(url, exc)) from exc
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        await migrate_postgres(conn)
    except psycopg.Error as exc:
        await conn.close()
        raise UserError(f"{describe(url)}: {' '.join(str(exc).split())}") from exc
    return conn


def run(url: str, job: Callable[[Conn], Awaitable[T]]) -> T:
    """Run ``job`` on a fresh connection to ``url`` (a command, outside any event loop).

    Raises:
        UserError: the database cannot be reached, or the job failed there.
    """

    async def main() -> T:
        conn = await connect(url)
        try:
            return await job(conn)
        except psycopg.Error as exc:
            raise UserError(f"{describe(url)}: {' '.join(str(exc).split())}") from exc
        finally:
            await conn.close()

    return asyncio.run(main())


async def create_invite(
    conn: Conn, name: str, *, profile: str | None, ttl: timedelta, now: datetime
) -> tuple[str, Invite]:
    """Make (or replace) ``name``'s invite; returns its code (shown once) and the invite."""
    code = new_code()
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_hash, code, salt)
    invite = Invite(name, profile, now, now + ttl)
    async with conn.transaction():
        await conn.execute("DELETE FROM invites WHERE expires_at <= %s", (now,))
        await conn.execute(
            f"INSERT INTO invites ({_INVITE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, hash = excluded.hash, "
            "profile = excluded.profile, created_at = excluded.created_at, "
            "expires_at = excluded.expires_at",
            (name, salt, digest, profile, now, invite.expires),
        )
        await _notify(conn, name)
    return code, invite


async def revoke_invite(conn: Conn, name: str) -> bool:
    """Drop ``name``'s invite; False if there was none."""
    async with conn.transaction():
        cursor = await conn.execute("DELETE FROM invites WHERE name = %s RETURNING 1", (name,))
        found = await cursor.fetchone() is not None
        if found:
            await _notify(conn, name)
    return found


async def list_invites(conn: Conn, now: datetime) -> list[Invite]:
    """Every pending invite, soonest to expire first."""
    cursor = await conn.execute(
        f"SELECT {_INVITE_COLUMNS} FROM invites WHERE expires_at > %s "
        "ORDER BY expires_at, name",
        (now,),
    )
    return [_pending(row).invite for row in await cursor.fetchall()]


async def enrolled(conn: Conn, name: str | None = None) -> dict[str, list[KeyEntry]]:
    """The keys enrolled by invite, per name (only ``name``'s when given)."""
    where, args = ("WHERE name = %s", (name,)) if name is not None else ("", ())
    cursor = await conn.execute(
        f"SELECT name, line FROM enrolled_keys {where} ORDER BY name, id", args
    )
    found: dict[str, list[KeyEntry]] = {}
    for who, line in await cursor.fetchall():
        try:
            entry = KeyEntry.parse(str(line), f"the key enrolled for {who}")
        except UserError as exc:
            log.warning("%s", exc)
            continue
        found.setdefault(str(who), []).append(entry)
    return found


async def set_profile(conn: Conn, name: str, profile: str) -> int:
    """Give every key enrolled for ``name`` the screen ``profile``; returns how many."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT id, line FROM enrolled_keys WHERE name = %s FOR UPDATE", (name,)
        )
        rows = await cursor.fetchall()
        for key_id, line in rows:
            entry = KeyEntry.parse(str(line), f"the key enrolled for {name}")
            await conn.execute(
                "UPDATE enrolled_keys SET line = %s WHERE id = %s",
                (entry.with_profile(profile).line(), key_id),
            )
        if rows:
            await _notify(conn, name)
    return len(rows)


async def remove_keys(conn: Conn, name: str) -> int:
    """Delete every key enrolled for ``name``; returns how many."""
    async with conn.transaction():
        cursor = await conn.execute("DELETE FROM enrolled_keys WHERE name = %s", (name,))
        count = cursor.rowcount
        if count:
            await _notify(conn, name)
    return count


# ----- the server's mirror ------------------------------------------------------------------


class SharedAccounts:
    """One server's view of the shared invites and enrolled keys (see the contract)."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Conn]) -> None:
        """Private: use :meth:`start`."""
        self.url = url
        self._pool = pool
        self._invites: dict[str, _Pending] = {}
        self._lines: dict[str, list[str]] = {}
        self._keys: dict[str, asyncssh.SSHAuthorizedKeys] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._loading = asyncio.Lock()

    @classmethod
    async def start(cls, url: str, pool: AsyncConnectionPool[Conn]) -> SharedAccounts:
        """Load both tables and start hearing changes (``pool``: the store's).

        Raises:
            StoreError: the database cannot be reached.
        """
        accounts = cls(url, pool)
        conn = await accounts._listening()
        accounts._listener = asyncio.create_task(
            accounts._hear(conn), name="kindlessh-accounts-listen"
        )
        return accounts

    async def close(self) -> None:
        """Stop hearing changes. Safe to call twice."""
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    # ----- hearing ------------------------------------------------------------------------

    async def _listening(self) -> Conn:
        """A connection that LISTENs, then the whole mirror loaded: a change committed
        meanwhile is both read and heard, never missed."""
        try:
            conn = await AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as exc:
            raise StoreError(explain(self.url, exc)) from exc
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
            await self._load()
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(explain(self.url, exc)) from exc
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _hear(self, conn: Conn) -> None:
        while True:
            try:
                async for notice in conn.notifies():
                    await self._load(notice.payload)
            except (psycopg.Error, StoreError) as exc:
                log.error("store %s: stopped hearing invites: %s", describe(self.url), exc)
            finally:
                await conn.close()
            while True:
                await asyncio.sleep(RETRY_SECONDS)
                try:
                    conn = await self._listening()
                    break
                except (psycopg.Error, StoreError) as exc:
                    log.warning("store %s: cannot hear invites yet: %s",
                                describe(self.url), exc)  # fmt: skip

    async def _load(self, name: str | None = None) -> None:
        """Read ``name``'s invite and keys again (everyone's without a name)."""
        # One read-and-apply at a time: two reads in flight could land out of order, and
        # the older would put back a key or invite removed in between.
        async with self._loading:
            await self._load_now(name)

    async def _load_now(self, name: str | None) -> None:
        where, args = ("WHERE name = %s", (name,)) if name is not None else ("", ())
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(f"SELECT {_INVITE_COLUMNS} FROM invites {where}", args)
                invites = [_pending(row) for row in await cursor.fetchall()]
                cursor = await conn.execute(
                    f"SELECT name, line FROM enrolled_keys {where} ORDER BY id", args
                )
                lines: dict[str, list[str]] = {}
                for who, line in await cursor.fetchall():
                    lines.setdefault(str(who), []).append(str(line))
        except psycopg.Error as exc:
            raise StoreError(explain(self.url, exc)) from exc
        if name is None:
            self._invites, self._lines, self._keys = {}, {}, {}
        else:
            self._invites.pop(name, None)
            self._lines.pop(name, None)
            self._keys.pop(name, None)
        for found in invites:
            self._invites[found.invite.name] = found
        for who, text in lines.items():
            try:
                self._keys[who] = asyncssh.import_authorized_keys("\n".join(text))
            except (ValueError, asyncssh.KeyImportError) as exc:
                log.warning("the keys enrolled for %s cannot be read: %s", who, exc)
                continue
            self._lines[who] = text

    # ----- the SSH callbacks' reads (memory only) -----------------------------------------

    def pending(self, name: str, now: datetime) -> Invite | None:
        """The unexpired invite for ``name``, if any."""
        found = self._invites.get(name)
        if found is None or found.invite.left(now) <= timedelta(0):
            return None
        return found.invite

    def any_pending(self, now: datetime) -> bool:
        """True while some name has an unexpired invite."""
        return any(p.invite.left(now) > timedelta(0) for p in self._invites.values())

    def keys(self, name: str) -> asyncssh.SSHAuthorizedKeys | None:
        """The keys enrolled for ``name`` by invite, or None."""
        return self._keys.get(name)

    def lines(self, name: str) -> list[str]:
        """Those keys as ``authorized_keys`` lines."""
        return list(self._lines.get(name, ()))

    def names(self) -> list[str]:
        """Every name with a key enrolled by invite, sorted."""
        return sorted(self._keys)

    # ----- redeeming ----------------------------------------------------------------------

    async def redeem_key(
        self, name: str, typed: str, now: datetime, entry: KeyEntry, budget: GuessBudget
    ) -> tuple[Redeemed, Invite | None]:
        """Check ``typed`` against ``name``'s invite; if right, store ``entry`` for
        ``name`` (with the invite's profile) and consume the invite, in one transaction.

        Returns:
            As :meth:`Invites.redeem <kindlessh._invites.Invites.redeem>`; a code over
            ``budget`` is ``("wrong", None)``, unchecked.

        Raises:
            UserError: the database failed; the invite then stays.
        """
        code = normalise(typed)
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    f"SELECT {_INVITE_COLUMNS} FROM invites WHERE name = %s "
                    "AND expires_at > %s",
                    (name, now),
                )
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise UserError(f"{describe(self.url)}: {' '.join(str(exc).split())}") from exc
        found = _pending(row) if row is not None else None
        # A name without an invite costs the same scrypt: the time taken tells nothing.
        salt = found.salt if found is not None else secrets.token_bytes(16)
        digest = await budget.run(lambda: _hash(code, salt))
        if digest is None:
            return "wrong", None
        if found is None:
            return "gone", None
        if not hmac.compare_digest(digest, found.hash):
            return "wrong", None
        invite = found.invite
        stored = entry.with_profile(invite.profile) if invite.profile else entry
        key_data = base64.b64encode(entry.key.public_data).decode()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "DELETE FROM invites WHERE name = %s AND salt = %s AND expires_at > %s "
                    "RETURNING 1",
                    (name, found.salt, now),
                )
                if await cursor.fetchone() is None:
                    return "gone", None  # used, replaced or revoked meanwhile
                await conn.execute(
                    "INSERT INTO enrolled_keys (name, key_data, line, added_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (name, key_data) DO NOTHING",
                    (name, key_data, stored.line(), now),
                )
                await _notify(conn, name)
        except psycopg.Error as exc:
            raise UserError(f"{describe(self.url)}: {' '.join(str(exc).split())}") from exc
        try:
            await self._load(name)  # at once here; the notice refreshes the others
        except StoreError as exc:
            log.warning("%s", exc)
        return "ok", invite
