"""The PostgreSQL store (:class:`~kindlessh._store.Store`), shared by worker processes.

Contract:
- :meth:`PostgresStore.open` connects to ``[storage] url``, applies every migration of
  :mod:`._migrations` not yet recorded (one worker at a time), and keeps a pool of
  connections for the calls plus one dedicated connection for the store's life.
- A server that cannot be reached, a refused login, a missing or non-UTF-8 database stop
  the start with :class:`~kindlessh._errors.StoreError`: one line naming the server (never
  the password) and what to do.
- Every write is one committed transaction, the same rows as the SQLite store writes,
  with the same meaning (see :class:`~kindlessh._store.Store`). A call that was made is
  carried out even if the awaiting task is cancelled; :meth:`PostgresStore.close`
  finishes every call already made. Calls of one task run in the order they are made;
  calls made at once may run at once, and a late progress save never overwrites a
  finished turn.
- Text is stored exactly: PostgreSQL text cannot hold NUL, so NUL (and the escape
  character, U+10FFFF) are escaped on the way in and restored on the way out.
- Liveness: the store's *owner* (a name made from host, pid and a random part unless
  given) holds a session advisory lock ``(LIVE_LOCK_CLASS, lock_key)`` on the dedicated
  connection and a row in ``workers``. The lock goes when the process dies, or while
  its link is cut; an owner is *dead* once seen without its lock for longer than the
  grace (``[storage] owner_grace_ms``), or when it has no ``workers`` row.
  :meth:`PostgresStore.live_owners` (every owner not dead) is the set of workers
  running; :meth:`PostgresStore.recover_interrupted` cuts only the answers of the dead.
  A live owner judged dead all the same keeps saving its answer and stores it whole.
- Every turn write also sends ``NOTIFY kindlessh_turns, '<user> <conversation> <turn>'``
  in its transaction (so only once it is committed); :meth:`PostgresStore.listen` hears
  them on the dedicated connection (turn 0: the conversation was deleted).
- A lost dedicated connection (PostgreSQL restarted, the link cut) is made again, with
  backing off: the same owner takes its lock again and listens again. Meanwhile the
  worker stays live for the grace, and what was written went unheard (followers check
  on their own, see :mod:`._follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar, cast
from urllib.parse import quote

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from ._errors import ConversationNotFound, InputRejected, StoreError
from ._migrations import migrate_postgres
from ._provider import Source, Usage
from ._rows import (
    DEAD_OWNER_NOTE,
    MARK_END,
    MARK_START,
    SNIPPET_TOKENS,
    ConversationRow,
    FinalState,
    Options,
    SearchHit,
    StoredState,
    TurnRow,
    search_terms,
)
from ._sqlite import stamp, utcnow

log = logging.getLogger("kindlessh.store")

T = TypeVar("T")
Conn = AsyncConnection[tuple[object, ...]]

# The class of every worker's liveness lock: pg_advisory_lock(LIVE_LOCK_CLASS, lock_key).
LIVE_LOCK_CLASS = 0x6B73686C  # "kshl"
CHANNEL = "kindlessh_turns"
# Ctrl-C on a screen following an answer another worker owns: '<user> <turn id>'.
STOP_CHANNEL = "kindlessh_stop"
# Pooled connections per worker, all opened at the start: a call holds one until its
# worker's event loop reads the answer, so under load (hundreds of answers saving each
# second, and the claims of the shared limits) a small pool makes every call queue, and
# a pool that grows does so while the loop is busiest.
POOL_SIZE = 16
# Seconds between tries to connect the listening connection again, first and at most:
# at most well under the owner's grace ([storage] owner_grace_ms, 3 s by default), so a
# worker back from a short outage takes its lock again before anyone counts it dead.
RECONNECT_FIRST, RECONNECT_MOST = 0.1, 1.0
CONNECT_TIMEOUT = 5  # seconds to reach the server at start
# Seconds a call waits for a pooled connection (the server unreachable meanwhile) before
# it fails with StoreError; the closing store's last write waits less.
CALL_TIMEOUT = 10
CLOSE_TIMEOUT = 2
# Seconds a worker may be seen without its liveness lock before it counts as dead (the
# default of [storage] owner_grace_ms; see _dead).
OWNER_GRACE = 3.0

# ----- exact text ---------------------------------------------------------------------------

_ESC = "\U0010ffff"  # a noncharacter: never in text a person types
_ESCAPED = re.compile(_ESC + "(.)", re.DOTALL)


def _enc(text: str) -> str:
    """``text`` as PostgreSQL can hold it (no NUL), reversibly."""
    if "\x00" not in text and _ESC not in text:
        return text
    return text.replace(_ESC, _ESC + "e").replace("\x00", _ESC + "0")


def _dec(text: str) -> str:
    """Stored text back as it was given."""
    if _ESC not in text:
        return text
    return _ESCAPED.sub(lambda m: "\x00" if m[1] == "0" else _ESC, text)


def _enc_opt(text: str | None) -> str | None:
    return None if text is None else _enc(text)


def _dec_opt(value: object) -> str | None:
    return None if value is None else _dec(cast(str, value))


# ----- opening ------------------------------------------------------------------------------


def describe(url: str) -> str:
    """The server and database ``url`` names, without its password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (an unreadable [storage] url)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"PostgreSQL {user}{info.get('host', 'localhost')}{port}/{info.get('dbname', '')}"


def explain(url: str, exc: BaseException) -> str:
    """One line for the owner: why the store at ``url`` cannot be opened, and the fix.
    The password is never in it: the driver's text is kept only when the URL could be
    read, and then with the password masked wherever it appears."""
    try:
        password = str(conninfo_to_dict(url).get("password") or "")
    except psycopg.Error:
        # The driver would quote the unreadable part, which may be the password.
        return (
            "Cannot open the conversation store: [storage] url cannot be read as a "
            "postgresql://user:password@host:port/database URL (percent-encode special "
            "characters in the password, e.g. %40 for @)."
        )
    text = " ".join(str(exc).split()).rstrip(".")
    for secret in {password, quote(password, safe="")} - {""}:
        text = text.replace(secret, "***")
    lowered = text.lower()
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if "authentication failed" in lowered or sqlstate.startswith("28"):
        hint = "check the user name and password in [storage] url"
    elif ("database" in lowered and "does not exist" in lowered) or sqlstate == "3D000":
        hint = (
            "create the database (createdb -O <user> <name>) or fix its name in "
            "[storage] url"
        )
    elif any(
        word in lowered
        for word in ("connection refused", "could not connect", "timeout", "timed out",
                     "translate host name", "no route", "connection failed")
    ):  # fmt: skip
        hint = "start PostgreSQL there, or fix the host and port in [storage] url"
    else:
        hint = "see the server's log"
    if len(text) > 300:
        text = text[:300] + "…"
    return f"Cannot open the conversation store {describe(url)}: {text}; {hint}."


def make_owner() -> str:
    """A worker's name: unique among the processes sharing a database."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lock_key(owner: str) -> int:
    """The advisory lock key of ``owner`` (a non-negative int4)."""
    return zlib.crc32(owner.encode()) & 0x7FFFFFFF


# How soon a connection whose other end vanished without a word (a machine that lost
# power, a cut link) is given up, on both ends: on the server, so that a dead worker's
# liveness lock goes within seconds rather than after TCP's two hours; here, so that a
# call does not wait on a dead server. Seconds: idle before probing, between probes,
# probes lost; and milliseconds data may stay unacknowledged.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, UNACKED_MS = 5, 2, 3, 10_000
_CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": UNACKED_MS,
}


def _conninfo(url: str) -> str:
    """``url`` with this end's keepalive settings added.

    Raises:
        psycopg.ProgrammingError: ``url`` cannot be read.
    """
    return make_conninfo(url, **_CLIENT_KEEPALIVES)


async def _utc(conn: Conn) -> None:
    """Every connection reads times in UTC (they are stored as timestamptz), and the
    server probes it as this end does (see KEEPALIVE_IDLE); over a Unix socket the
    probing settings do nothing."""
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute(f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE}")
    await conn.execute(f"SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL}")
    await conn.execute(f"SET tcp_keepalives_count = {KEEPALIVE_COUNT}")
    await conn.execute(f"SET tcp_user_timeout = {UNACKED_MS}")


async def _connect(url: str) -> Conn:
    try:
        conn = await AsyncConnection.connect(
            _conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.Error as exc:
        raise StoreError(explain(url, exc)) from exc
    try:
        await _utc(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


# ----- rows ---------------------------------------------------------------------------------

_TURN_COLUMNS = (
    "t.id, t.conversation_id, t.position, t.question, t.answer, t.thoughts, t.model, "
    "t.state, t.note, t.finish_reason, t.input_tokens, t.output_tokens, t.thoughts_tokens, "
    "t.started_at, t.duration_ms, t.incomplete, t.replay, t.sources, t.owner"
)

_LISTED = (
    "SELECT c.id, c.title, c.created_at, c.updated_at, "
    "(SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id), "
    "(SELECT t.model FROM turns t WHERE t.conversation_id = c.id "
    "ORDER BY t.position DESC LIMIT 1) "
    "FROM conversations c "
)

# Touch a turn's conversation and announce the turn, in the statement that wrote it:
# a data-modifying CTE named ``t`` returning (id, conversation_id) goes before this.
_TOUCH_AND_NOTIFY = (
    ", c AS (UPDATE conversations SET updated_at = %s "
    "WHERE id IN (SELECT conversation_id FROM t) RETURNING id, \"user\") "
    f"SELECT pg_notify('{CHANNEL}', c.\"user\" || ' ' || c.id || ' ' || t.id), t.id "
    "FROM t JOIN c ON c.id = t.conversation_id"
)

# The liveness lock keys held right now in this database, as column ``key``.
_HELD = (
    "SELECT l.objid::int8 AS key FROM pg_locks l WHERE l.locktype = 'advisory' "
    "AND l.granted AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND l.classid::int8 = {LIVE_LOCK_CLASS}"
)

# Strategy: a worker whose lock is not held may be a live one reconnecting (PostgreSQL
# restarted, its link cut), so it is dead only once *seen* so for longer than the grace:
# every liveness check first runs _MARK, which stamps ``lost_at`` on the rows whose
# lock is not held (once) and clears it on those whose lock is held. SKIP LOCKED: two
# checks at once never wait for (or deadlock on) each other; either one's mark will do.
_MARK = (
    f"WITH held AS ({_HELD}) "
    "UPDATE workers w SET lost_at = CASE WHEN w.lock_key IN (SELECT key FROM held) "
    "THEN NULL ELSE clock_timestamp() END "
    "WHERE w.owner IN (SELECT owner FROM workers "
    "WHERE (lost_at IS NULL) = (lock_key NOT IN (SELECT key FROM held)) "
    "FOR UPDATE OF workers SKIP LOCKED)"
)


def _dead(grace: float) -> str:
    """SQL true for a ``workers w`` row of a dead worker: its lock is not held and was
    first seen not held more than ``grace`` seconds before the transaction began (by
    :data:`_MARK`; ``now()``, so every statement of one transaction agrees). The one
    definition of a dead owner: :meth:`PostgresStore.live_owners` (and so the shared
    limits, :mod:`._shared_limits`) and :meth:`PostgresStore.recover_interrupted` use it;
    an owner with no ``workers`` row at all is dead too."""
    return (
        f"(w.lock_key NOT IN (SELECT key FROM ({_HELD}) h) AND w.lost_at IS NOT NULL "
        f"AND w.lost_at < now() - make_interval(secs => {float(grace)!r}))"
    )


def _live(grace: float) -> str:
    """The owners not dead (see :func:`_dead`), as column ``owner``."""
    return f"SELECT w.owner FROM workers w WHERE NOT {_dead(grace)}"


def _conversation_row(row: tuple[object, ...]) -> ConversationRow:
    id_, title, created, updated, count, model = row
    return ConversationRow(
        cast(int, id_), _dec(cast(str, title)), cast(datetime, created),
        cast(datetime, updated), cast(int, count), _dec_opt(model) or "",
    )  # fmt: skip


def _usage(inputs: object, outputs: object, thoughts: object) -> Usage | None:
    if inputs is None and outputs is None and thoughts is None:
        return None
    return Usage(cast(int, inputs or 0), cast(int, outputs or 0), cast(int, thoughts or 0))


def _sources(text: str | None) -> tuple[Source, ...]:
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    return tuple(
        Source(*(str(v) for v in item[:3]))
        for item in items if isinstance(item, list) and item
    ) if isinstance(items, list) else ()  # fmt: skip


def _turn_row(row: tuple[object, ...]) -> TurnRow:
    (id_, conversation_id, position, question, answer, thoughts, model, state, note,
     finish_reason, input_tokens, output_tokens, thoughts_tokens, started_at, duration_ms,
     incomplete, replay, sources, owner) = row  # fmt: skip
    return TurnRow(
        id=cast(int, id_),
        conversation_id=cast(int, conversation_id),
        position=cast(int, position),
        question=_dec(cast(str, question)),
        answer=_dec(cast(str, answer)),
        thoughts=_dec(cast(str, thoughts)),
        model=_dec(cast(str, model)),
        state=cast(StoredState, state),
        note=_dec_opt(note),
        finish_reason=_dec_opt(finish_reason),
        usage=_usage(input_tokens, output_tokens, thoughts_tokens),
        started_at=cast(datetime, started_at),
        duration_ms=cast("int | None", duration_ms),
        incomplete=bool(incomplete),
        replay=_dec_opt(replay) or "",
        sources=_sources(_dec_opt(sources)),
        owner=_dec_opt(owner) or "",
    )


def _tsquery(words: str) -> tuple[str, list[str]]:
    """The tsquery SQL (and its parameters) for what a reader typed: every term must
    match; a phrase's words in order; ``word*`` a prefix. PostgreSQL's own parser splits
    each term into words, as it split the text, so punctuation is plain text."""
    parts: list[str] = []
    params: list[str] = []
    for text, prefix in search_terms(words):
        if prefix:
            parts.append(
                "to_tsquery('simple', "
                "NULLIF(phraseto_tsquery('simple', %s)::text, '') || ':*')"
            )
        else:
            parts.append("phraseto_tsquery('simple', %s)")
        params.append(_enc(text))
    return " && ".join(parts), params


_HEADLINE = (
    f'StartSel="{MARK_START}", StopSel="{MARK_END}", MaxWords={SNIPPET_TOKENS}, '
    f"MinWords={SNIPPET_TOKENS * 2 // 3}, ShortWord=0, HighlightAll=false"
)


def _snippet(headline: str, text: str) -> str:
    """A headline with "…" where it cut the text, as FTS5 snippets have."""
    plain = headline.replace(MARK_START, "").replace(MARK_END, "")
    if plain and not text.startswith(plain[:20]):
        headline = "…" + headline
    if plain and not text.rstrip().endswith(plain.rstrip()[-20:]):
        headline += "…"
    return headline


class PostgresStore:
    """The PostgreSQL store; make one with :meth:`open`, end it with :meth:`close`."""

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[Conn],
        conn: Conn,
        clock: Callable[[], datetime],
        owner: str,
        grace: float = OWNER_GRACE,
    ) -> None:
        """Private: use :meth:`open`."""
        self.url = url
        self._pool = pool
        self._conn = conn  # dedicated: the liveness lock, LISTEN
        self._clock = clock
        self._owner = owner
        self._closed = False
        self._pending: set[asyncio.Task[object]] = set()
        self._callbacks: list[Callable[[str, int, int], None]] = []
        self._stop_callbacks: list[Callable[[str, int], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._grace = grace
        self._recheck: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        grace: float = OWNER_GRACE,
    ) -> PostgresStore:
        """Connect to ``url``, migrate the database, take the owner's liveness lock.

        Args:
            url: a ``postgresql://`` URL.
            clock: returns the current time, aware (injectable for tests).
            owner: this worker's name (default: host, pid and a random part).
            grace: seconds a worker may be seen without its liveness lock before it
                counts as dead (``[storage] owner_grace_ms``).

        Raises:
            StoreError: the server cannot be reached, the login is refused, the database
                is missing or not UTF-8, a migration failed, or ``owner`` is already live.
        """
        conn = await _connect(url)
        pool: AsyncConnectionPool[Conn] | None = None
        try:
            encoding = await (await conn.execute("SHOW server_encoding")).fetchone()
            if encoding is None or str(encoding[0]).upper() not in ("UTF8", "UTF-8"):
                raise StoreError(
                    f"Cannot open the conversation store {describe(url)}: the database "
                    f"encoding is {encoding and encoding[0]}; create it with "
                    "ENCODING 'UTF8'."
                )
            applied = await migrate_postgres(conn, clock=clock)
            if applied:
                log.info("store %s: applied migrations %s", describe(url), ", ".join(applied))
            owner = await cls._take_liveness(conn, owner, clock)
            pool = AsyncConnectionPool(
                _conninfo(url),
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
                configure=_utc,
                open=False,
                timeout=CALL_TIMEOUT,
                name="kindlessh-store",
            )
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except BaseException as exc:
            # Nothing of a store that could not open stays connected (a pool that timed
            # out opening would go on trying in the background).
            if pool is not None:
                await pool.close()
            await conn.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(explain(url, exc)) from exc
            raise
        return cls(url, pool, conn, clock, owner, grace)

    @staticmethod
    async def _take_liveness(
        conn: Conn, owner: str | None, clock: Callable[[], datetime]
    ) -> str:
        """Hold the owner's liveness lock on ``conn`` and record it in ``workers``."""
        for _ in range(10):
            name = owner or make_owner()
            key = lock_key(name)
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LIVE_LOCK_CLASS, key)
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                # Lock first, row second: a row whose lock is not held is a dead worker.
                await conn.execute(
                    "INSERT INTO workers (owner, lock_key, started_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (owner) DO UPDATE SET lock_key = excluded.lock_key, "
                    "started_at = excluded.started_at, lost_at = NULL",
                    (_enc(name), key, clock()),
                )
                return name
            if owner is not None:
                raise StoreError(
                    f"Cannot open the conversation store: the worker name {owner!r} is "
                    "in use by a running process (or shares its lock key); give another."
                )
        raise StoreError("Cannot open the conversation store: no free worker lock key.")

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        """The store's connection pool (autocommit), for :mod:`._shared_limits`."""
        return self._pool

    @property
    def owner(self) -> str:
        """This worker's name, stored on the turns it adds."""
        return self._owner

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Finish every call already made, then close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        for task in (self._listener, self._recheck):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            async with self._pool.connection(timeout=CLOSE_TIMEOUT) as conn:
                await conn.execute("DELETE FROM workers WHERE owner = %s", (_enc(self._owner),))
        except psycopg.Error as exc:  # PoolTimeout included
            log.warning("store %s: could not remove worker %s: %s",
                        describe(self.url), self._owner, exc)  # fmt: skip
        finally:
            await self._pool.close()
            await self._conn.close()  # the liveness lock goes with the session

    # ----- calls --------------------------------------------------------------------------

    async def _call(self, job: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise RuntimeError("the conversation store is closed")
        task: asyncio.Task[T] = asyncio.ensure_future(self._run(job))
        self._pending.add(cast("asyncio.Task[object]", task))
        task.add_done_callback(self._done)
        # Strategy: shield, so that cancelling the awaiting task never cancels a call
        # already made (the final write of an answer must land during a teardown).
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's failure is not "unheard"

    async def _run(self, job: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            async with self._pool.connection() as conn:
                return await job(conn)
        except psycopg.Error as exc:
            text = " ".join(str(exc).split()).rstrip(".")[:300]
            raise StoreError(f"The conversation store failed: {text}.") from exc

    def _now(self) -> datetime:
        return self._clock()

    # ----- conversations ------------------------------------------------------------------

    async def new_conversation(self, user: str, title: str) -> int:
        """Create an empty conversation for ``user``; returns its id."""
        now = self._now()

        async def job(conn: Conn) -> int:
            cursor = await conn.execute(
                'INSERT INTO conversations ("user", title, created_at, updated_at) '
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (_enc(user), _enc(title), now, now),
            )
            row = await cursor.fetchone()
            assert row is not None
            return cast(int, row[0])

        return await self._call(job)

    async def list_conversations(
        self, user: str, limit: int = 50, offset: int = 0
    ) -> list[ConversationRow]:
        """``user``'s conversations, most recently updated first (newest id on ties)."""

        async def job(conn: Conn) -> list[ConversationRow]:
            cursor = await conn.execute(
                _LISTED + 'WHERE c."user" = %s '
                "ORDER BY c.updated_at DESC, c.id DESC LIMIT %s OFFSET %s",
                (_enc(user), limit, offset),
            )
            return [_conversation_row(row) for row in await cursor.fetchall()]

        return await self._call(job)

    async def search(
        self, user: str, words: str, limit: int = 20, offset: int = 0
    ) -> list[SearchHit]:
        """``user``'s turns whose question or answer match ``words``, newest first, with
        a snippet (``ts_headline``) of the answer where it matches, else the question.

        Raises:
            InputRejected: nothing searchable in ``words``.
        """
        query, params = _tsquery(words)
        if not query:
            raise InputRejected("Give words to search for: /search paris museum")

        async def job(conn: Conn) -> list[SearchHit]:
            cursor = await conn.execute(
                "SELECT t.conversation_id, t.position, c.title, t.started_at, "
                "CASE WHEN to_tsvector('simple', t.answer) @@ q.q "
                "OR NOT to_tsvector('simple', t.question) @@ q.q THEN t.answer "
                "ELSE t.question END "
                "FROM turns t JOIN conversations c ON c.id = t.conversation_id, "
                f"(SELECT {query} AS q) q "
                'WHERE c."user" = %s AND t.search @@ q.q '
                "ORDER BY t.started_at DESC, t.id DESC LIMIT %s OFFSET %s",
                (*params, _enc(user), limit, offset),
            )
            rows = await cursor.fetchall()
            if not rows:
                return []
            # Headlines only for the page shown: ts_headline re-parses the whole text.
            texts = [cast(str, row[4]) for row in rows]
            cursor = await conn.execute(
                f"SELECT ts_headline('simple', x.text, ({query}), %s) "
                "FROM unnest(%s::text[]) WITH ORDINALITY AS x(text, n) ORDER BY x.n",
                (*params, _HEADLINE, texts),
            )
            headlines = [cast(str, r[0]) for r in await cursor.fetchall()]
            return [
                SearchHit(
                    cast(int, row[0]), cast(int, row[1]), _dec(cast(str, row[2])),
                    cast(datetime, row[3]), _dec(_snippet(headline, text)),
                )  # fmt: skip
                for row, text, headline in zip(rows, texts, headlines, strict=True)
            ]

        return await self._call(job)

    async def get_conversation(self, user: str, conversation_id: int) -> ConversationRow:
        """One of ``user``'s conversations.

        Raises:
            ConversationNotFound: no such conversation of this user.
        """

        async def job(conn: Conn) -> ConversationRow | None:
            cursor = await conn.execute(
                _LISTED + 'WHERE c."user" = %s AND c.id = %s', (_enc(user), conversation_id)
            )
            row = await cursor.fetchone()
            return None if row is None else _conversation_row(row)

        found = await self._call(job)
        if found is None:
            raise ConversationNotFound(f"No conversation {conversation_id}.")
        return found

    async def conversation_options(self, user: str, conversation_id: int) -> Options:
        """One of ``user``'s conversations' own choices (None: the server's default)."""

        async def job(conn: Conn) -> Options:
            cursor = await conn.execute(
                "SELECT system_prompt, web, model FROM conversations "
                'WHERE id = %s AND "user" = %s',
                (conversation_id, _enc(user)),
            )
            row = await cursor.fetchone()
            if row is None:
                raise ConversationNotFound(f"No conversation {conversation_id}.")
            web = None if row[1] is None else bool(row[1])
            return Options(_dec_opt(row[0]), web, _dec_opt(row[2]))

        return await self._call(job)

    async def set_conversation_options(self, conversation_id: int, options: Options) -> None:
        """Store a conversation's own choices."""

        async def job(conn: Conn) -> None:
            await conn.execute(
                "UPDATE conversations SET system_prompt = %s, web = %s, model = %s "
                "WHERE id = %s",
                (_enc_opt(options.system_prompt), options.web, _enc_opt(options.model),
                 conversation_id),
            )  # fmt: skip

        await self._call(job)

    async def latest_conversation(self, user: str) -> int | None:
        """The id of ``user``'s most recently updated conversation, or ``None``."""

        async def job(conn: Conn) -> int | None:
            cursor = await conn.execute(
                'SELECT id FROM conversations WHERE "user" = %s '
                "ORDER BY updated_at DESC, id DESC LIMIT 1",
                (_enc(user),),
            )
            row = await cursor.fetchone()
            return None if row is None else cast(int, row[0])

        return await self._call(job)

    async def load_turns(self, user: str, conversation_id: int) -> list[TurnRow]:
        """The turns of one of ``user``'s conversations, in order.

        Raises:
            ConversationNotFound: no such conversation, or it is not ``user``'s.
        """

        async def job(conn: Conn) -> list[TurnRow]:
            # One statement, one snapshot: the ownership check and the turns agree.
            cursor = await conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM conversations c "
                "LEFT JOIN turns t ON t.conversation_id = c.id "
                'WHERE c.id = %s AND c."user" = %s ORDER BY t.position',
                (conversation_id, _enc(user)),
            )
            rows = await cursor.fetchall()
            if not rows:
                raise ConversationNotFound(f"No conversation {conversation_id}.")
            return [_turn_row(row) for row in rows if row[0] is not None]

        return await self._call(job)

    async def get_turn(self, user: str, turn_id: int) -> TurnRow:
        """One of ``user``'s turns.

        Raises:
            ConversationNotFound: no such turn, or it is not ``user``'s.
        """

        async def job(conn: Conn) -> TurnRow | None:
            cursor = await conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns t "
                "JOIN conversations c ON c.id = t.conversation_id "
                'WHERE t.id = %s AND c."user" = %s',
                (turn_id, _enc(user)),
            )
            row = await cursor.fetchone()
            return None if row is None else _turn_row(row)

        found = await self._call(job)
        if found is None:
            raise ConversationNotFound(f"No turn {turn_id}.")
        return found

    async def delete_conversation(self, user: str, conversation_id: int) -> bool:
        """Delete one of ``user``'s conversations and its turns (not its token usage),
        and tell the listeners (turn id 0).

        Returns:
            False when there was no such conversation for ``user``.
        """

        async def job(conn: Conn) -> bool:
            # Turn id 0 in the notification: the whole conversation went.
            cursor = await conn.execute(
                'WITH gone AS (DELETE FROM conversations WHERE id = %s AND "user" = %s '
                'RETURNING "user", id) '
                f"SELECT pg_notify('{CHANNEL}', \"user\" || ' ' || id || ' 0') FROM gone",
                (conversation_id, _enc(user)),
            )
            return cursor.rowcount > 0

        return await self._call(job)

    # ----- turns --------------------------------------------------------------------------

    async def add_turn(self, conversation_id: int, question: str, model: str) -> int:
        """Start a turn at the end of a conversation: ``streaming``, incomplete, empty
        answer, owned by this store's owner.

        Raises:
            ConversationNotFound: the conversation does not exist (any more).
        """
        now = self._now()

        async def job(conn: Conn) -> int:
            async with conn.transaction():
                # The row lock orders workers adding to one conversation at once, so
                # each reads the position the other committed.
                cursor = await conn.execute(
                    "SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,)
                )
                if await cursor.fetchone() is None:
                    raise ConversationNotFound(f"No conversation {conversation_id}.")
                cursor = await conn.execute(
                    "WITH t AS (INSERT INTO turns (conversation_id, position, question, "
                    "answer, thoughts, model, state, started_at, incomplete, owner) "
                    "SELECT %s, COALESCE(MAX(position), 0) + 1, %s, '', '', %s, "
                    "'streaming', %s, true, %s FROM turns WHERE conversation_id = %s "
                    "RETURNING id, conversation_id)" + _TOUCH_AND_NOTIFY,
                    (conversation_id, _enc(question), _enc(model), now, _enc(self._owner),
                     conversation_id, now),
                )  # fmt: skip
                row = await cursor.fetchone()
                assert row is not None
                return cast(int, row[1])

        return await self._call(job)

    async def save_progress(self, turn_id: int, answer: str, thoughts: str) -> bool:
        """Commit the text streamed so far (the whole text, not a delta).

        A turn of this owner that recovery marked interrupted (this worker was judged
        dead: cut off from the database past the grace, yet alive) streams again: it is
        set back to ``streaming``, so that the answer is never lost and a crash later
        loses at most ``commit_interval_ms`` of it, as ever.

        Returns:
            False when the turn no longer exists or is no longer streaming.
        """
        now = self._now()

        async def job(conn: Conn) -> bool:
            cursor = await conn.execute(
                "WITH t AS (UPDATE turns SET answer = %s, thoughts = %s, "
                "state = 'streaming', note = NULL WHERE id = %s AND (state = 'streaming' "
                "OR (state = 'stopped' AND note = %s AND owner = %s)) "
                "RETURNING id, conversation_id)"
                + _TOUCH_AND_NOTIFY,
                (_enc(answer), _enc(thoughts), turn_id, DEAD_OWNER_NOTE,
                 _enc(self._owner), now),
            )  # fmt: skip
            return cursor.rowcount > 0

        return await self._call(job)

    async def finish_turn(
        self,
        turn_id: int,
        *,
        answer: str,
        thoughts: str,
        state: FinalState,
        incomplete: bool,
        note: str | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        duration_ms: int | None = None,
        holder: str | None = None,
        replay: str = "",
        sources: tuple[Source, ...] = (),
    ) -> bool:
        """Store a turn's final text and outcome, and record its tokens in the ledger
        (see :meth:`kindlessh._sqlite_store.SqliteStore.finish_turn`). Only the owner
        finishes a turn, and it has the whole answer: its finish replaces what recovery
        wrote if this worker was judged dead while alive (answers are never lost).

        Returns:
            False when the turn no longer exists.

        Raises:
            ValueError: ``state`` is not a final state.
        """
        if state not in ("done", "stopped", "failed"):
            raise ValueError(f"not a final state: {state!r}")
        stored_sources = (
            json.dumps([[s.title, s.site, s.url] for s in sources], ensure_ascii=False)
            if sources else None
        )  # fmt: skip
        now = self._now()
        counts = (
            (None, None, None)
            if usage is None
            else (usage.input_tokens, usage.output_tokens, usage.thoughts_tokens)
        )

        async def job(conn: Conn) -> bool:
            async with conn.transaction():
                cursor = await conn.execute(
                    "WITH t AS (UPDATE turns SET answer = %s, thoughts = %s, state = %s, "
                    "note = %s, finish_reason = %s, input_tokens = %s, output_tokens = %s, "
                    "thoughts_tokens = %s, duration_ms = %s, incomplete = %s, replay = %s, "
                    "sources = %s WHERE id = %s RETURNING id, conversation_id)"
                    + _TOUCH_AND_NOTIFY,
                    (_enc(answer), _enc(thoughts), state, _enc_opt(note),
                     _enc_opt(finish_reason), *counts, duration_ms, incomplete,
                     _enc(replay) or None, _enc_opt(stored_sources), turn_id, now),
                )  # fmt: skip
                if cursor.rowcount == 0:
                    return False
                if usage is not None and usage.counted:
                    # An upsert: finishing a turn twice replaces its ledger entry.
                    await conn.execute(
                        'INSERT INTO token_usage ("user", holder, turn_id, model, '
                        "started_at, input_tokens, output_tokens, thoughts_tokens) "
                        'SELECT c."user", COALESCE(%s, c."user"), t.id, t.model, '
                        "t.started_at, %s, %s, %s "
                        "FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                        "WHERE t.id = %s "
                        "ON CONFLICT (turn_id) DO UPDATE SET "
                        "input_tokens = excluded.input_tokens, "
                        "output_tokens = excluded.output_tokens, "
                        "thoughts_tokens = excluded.thoughts_tokens",
                        (_enc_opt(holder), *counts, turn_id),
                    )
                return True

        return await self._call(job)

    async def delete_turn(self, turn_id: int) -> bool:
        """Delete a turn (``/retry`` replaces the last answer); its token usage stays.

        Returns:
            False when the turn did not exist.
        """
        now = self._now()

        async def job(conn: Conn) -> bool:
            cursor = await conn.execute(
                "WITH t AS (DELETE FROM turns WHERE id = %s RETURNING id, conversation_id)"
                + _TOUCH_AND_NOTIFY,
                (turn_id, now),
            )
            return cursor.rowcount > 0

        return await self._call(job)

    async def live_owners(self) -> set[str]:
        """The owners of the workers running now: every ``workers`` row but the dead
        (lock not held, and seen so for longer than the grace; see :func:`_dead`). Each
        call is a liveness check: it marks which locks it saw gone or back."""
        live = _live(self._grace)

        async def job(conn: Conn) -> set[str]:
            await conn.execute(_MARK)
            cursor = await conn.execute(live)
            return {_dec(cast(str, row[0])) for row in await cursor.fetchall()}

        return await self._call(job)

    async def recover_interrupted(self) -> int:
        """Mark as stopped and incomplete every turn still ``streaming`` whose owner is
        dead (see :func:`_dead`: a worker that died, or a server stopped), with
        :data:`~kindlessh._store.DEAD_OWNER_NOTE`; the answers live workers are streaming
        are left alone, and so are those of a worker within its grace (it may be
        reconnecting): for those, this runs again once the grace is over. Forgets the
        ``workers`` rows of the dead.

        Returns:
            How many turns were marked.
        """
        live, dead = _live(self._grace), _dead(self._grace)

        async def job(conn: Conn) -> tuple[int, bool]:
            async with conn.transaction():
                await conn.execute(_MARK)
                cursor = await conn.execute(
                    f"WITH live AS ({live}), "
                    "t AS (UPDATE turns SET state = 'stopped', incomplete = true, note = %s "
                    "WHERE state = 'streaming' "
                    "AND (owner IS NULL OR owner NOT IN (SELECT owner FROM live)) "
                    "RETURNING id, conversation_id) "
                    f"SELECT pg_notify('{CHANNEL}', c.\"user\" || ' ' || c.id || ' ' || t.id) "
                    "FROM t JOIN conversations c ON c.id = t.conversation_id",
                    (DEAD_OWNER_NOTE,),
                )
                count = cursor.rowcount
                await conn.execute(f"DELETE FROM workers w WHERE {dead}")
                # Answers of workers lost but within their grace: look again later.
                cursor = await conn.execute(
                    "SELECT 1 FROM turns t JOIN workers w ON w.owner = t.owner "
                    "WHERE t.state = 'streaming' AND w.lost_at IS NOT NULL LIMIT 1"
                )
                return count, await cursor.fetchone() is not None

        count, waiting = await self._call(job)
        if count:
            log.warning("marked %d interrupted answer(s) as stopped", count)
        again = self._recheck is None or self._recheck.done()
        if waiting and not self._closed and (again or self._recheck is asyncio.current_task()):
            self._recheck = asyncio.create_task(
                self._recover_later(), name="kindlessh-store-recheck"
            )
        return count

    async def _recover_later(self) -> None:
        """:meth:`recover_interrupted` again once a lost worker's grace is over."""
        await asyncio.sleep(self._grace + 0.05)
        try:
            await self.recover_interrupted()
        except StoreError as exc:
            log.warning("could not look for interrupted answers again: %s", exc)

    async def tokens_used(self, holder: str, since: datetime) -> int:
        """Input, output and thinking tokens of ``holder``'s turns started at or after
        ``since``, including turns since deleted.

        Raises:
            ValueError: ``since`` is naive.
        """
        return (await self.token_counts(holder, since)).counted

    async def token_counts(self, holder: str, since: datetime) -> Usage:
        """The tokens of :meth:`tokens_used`, by kind (input, output, thinking).

        Raises:
            ValueError: ``since`` is naive.
        """
        stamp(since)  # refuses a naive time, as the SQLite store does

        async def job(conn: Conn) -> Usage:
            cursor = await conn.execute(
                "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
                "COALESCE(SUM(thoughts_tokens), 0) FROM token_usage "
                "WHERE holder = %s AND started_at >= %s",
                (_enc(holder), since),
            )
            row = await cursor.fetchone()
            assert row is not None
            return Usage(int(cast(int, row[0])), int(cast(int, row[1])), int(cast(int, row[2])))

        return await self._call(job)

    # ----- notifications ------------------------------------------------------------------

    async def listen(self, callback: Callable[[str, int, int], None]) -> None:
        """Call ``callback(user, conversation_id, turn_id)`` for every turn any store on
        this database writes from now on (this one's included), until :meth:`close`."""
        if self._closed:
            raise RuntimeError("the conversation store is closed")
        self._callbacks.append(callback)
        await self._start_hearing()

    async def listen_stops(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(user, turn_id)`` whenever a worker asks (:meth:`ask_stop`)
        that the answer of turn ``turn_id`` be stopped, until :meth:`close`."""
        if self._closed:
            raise RuntimeError("the conversation store is closed")
        self._stop_callbacks.append(callback)
        await self._start_hearing()

    async def ask_stop(self, user: str, turn_id: int) -> None:
        """Ask the worker that owns turn ``turn_id`` of ``user`` to stop its answer."""

        async def job(conn: Conn) -> None:
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (STOP_CHANNEL, f"{_enc(user)} {turn_id}")
            )

        await self._call(job)

    async def _start_hearing(self) -> None:
        if self._listener is None:
            # Both channels before hearing: the connection is busy once notifies() runs.
            await self._conn.execute(f"LISTEN {CHANNEL}")
            await self._conn.execute(f"LISTEN {STOP_CHANNEL}")
            self._listener = asyncio.create_task(self._hear(), name="kindlessh-store-listen")

    def _stop_asked(self, payload: str) -> None:
        user, turn = payload.rsplit(" ", 1)
        asked = (_dec(user), int(turn))  # ValueError: not ours (see _heard)
        for callback in list(self._stop_callbacks):
            try:
                callback(*asked)
            except Exception:
                log.exception("a stop listener failed")

    async def _hear(self) -> None:
        """Hear notifications on the dedicated connection for the store's life. When the
        connection is lost (PostgreSQL restarted, the connection cut), connect again,
        take the liveness lock again under the same owner name and listen again, trying
        every RECONNECT_FIRST seconds at first and at most every RECONNECT_MOST."""
        delay = RECONNECT_FIRST
        while not self._closed:
            try:
                async for notice in self._conn.notifies():
                    self._heard(notice.channel, notice.payload)
                    delay = RECONNECT_FIRST
            except psycopg.Error as exc:
                if self._closed:
                    return
                log.error("store %s: lost the listening connection: %s; connecting again",
                          describe(self.url), " ".join(str(exc).split()))  # fmt: skip
            while not self._closed and not await self._reconnect():
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MOST)

    async def _reconnect(self) -> bool:
        """One try at a new dedicated connection: the liveness lock, the channels."""
        try:
            conn = await _connect(self.url)
        except (psycopg.Error, StoreError):
            return False
        try:
            await self._take_liveness(conn, self._owner, self._clock)
            await conn.execute(f"LISTEN {CHANNEL}")
            await conn.execute(f"LISTEN {STOP_CHANNEL}")
        except (psycopg.Error, StoreError) as exc:
            log.warning("store %s: connected again but could not listen: %s",
                        describe(self.url), exc)  # fmt: skip
            await conn.close()
            return False
        except BaseException:
            await conn.close()  # cancelled by close(): the new lock goes with it
            raise
        old, self._conn = self._conn, conn
        with contextlib.suppress(psycopg.Error):
            await old.close()
        log.warning("store %s: listening again as %s (writes made meanwhile went unheard)",
                    describe(self.url), self._owner)  # fmt: skip
        return True

    def _heard(self, channel: str, payload: str) -> None:
        # Anyone who may log in to the database can NOTIFY on these channels: a payload
        # that is not ours is logged and ignored, never the end of hearing.
        try:
            if channel == STOP_CHANNEL:
                self._stop_asked(payload)
                return
            user, conversation, turn = payload.rsplit(" ", 2)
            written = (_dec(user), int(conversation), int(turn))
        except ValueError:
            log.warning("store %s: ignored a notification on %s: %.80r",
                        describe(self.url), channel, payload)  # fmt: skip
            return
        for callback in list(self._callbacks):
            try:
                callback(*written)
            except Exception:
                log.exception("a turn listener failed")
