"""The store's schema, as the ordered list of migrations that build it.

Contract:
- :data:`MIGRATIONS` lists every migration in the order it is applied; that list is the
  only place the order lives. :func:`migrate` (SQLite) and :func:`migrate_postgres`
  (PostgreSQL) apply those not yet recorded in the ``_migrations`` table, each in its own
  transaction with its record, and return their names; re-running either is a no-op.
- Every migration exists in both dialects under one name: the SQLite one is the function
  itself, the PostgreSQL one its statements in :data:`POSTGRES` (same name, same order).
- On PostgreSQL each migration's transaction first takes a transaction-level advisory
  lock (:data:`MIGRATION_LOCK`), so workers starting at once apply each migration once.
- A migration that has shipped is never edited or reordered; a change is a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ._sqlite import stamp, transaction, utcnow

if TYPE_CHECKING:
    import psycopg

# Strategy (after llm): each migration is a function named mNNN_what, applied once, in list
# order, in its own transaction together with its row in _migrations. Never edit or reorder
# a migration that has shipped; append a new one. Migrations use conn.execute only:
# executescript() would COMMIT the open transaction behind our back.


def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            user TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX conversations_user_updated ON conversations (user, updated_at)")
    conn.execute(
        """
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL
                REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            question TEXT NOT NULL,
            answer TEXT NOT NULL DEFAULT '',
            thoughts TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('streaming', 'done', 'stopped', 'failed')),
            note TEXT,
            finish_reason TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            thoughts_tokens INTEGER,
            started_at TEXT NOT NULL,
            duration_ms INTEGER,
            incomplete INTEGER NOT NULL DEFAULT 0 CHECK (incomplete IN (0, 1))
        )
        """
    )
    conn.execute(
        "CREATE UNIQUE INDEX turns_conversation_position ON turns (conversation_id, position)"
    )
    # Only recover_interrupted looks turns up by state, once per start; a partial index keeps
    # that cheap without indexing the many finished turns.
    conn.execute("CREATE INDEX turns_streaming ON turns (state) WHERE state = 'streaming'")
    # The budget ledger: not tied to conversations, so deleting one does not refund tokens.
    # turn_id is kept for auditing and becomes NULL when the turn is deleted.
    conn.execute(
        """
        CREATE TABLE token_usage (
            id INTEGER PRIMARY KEY,
            user TEXT NOT NULL,
            turn_id INTEGER UNIQUE REFERENCES turns (id) ON DELETE SET NULL,
            model TEXT NOT NULL,
            started_at TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            thoughts_tokens INTEGER NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX token_usage_user_started ON token_usage (user, started_at)")


def m002_token_holder(conn: sqlite3.Connection) -> None:
    # Limits follow whoever holds the login, not the name typed (issue 18): the ledger
    # is summed by holder. Rows from before were counted by name; they keep it.
    conn.execute("ALTER TABLE token_usage ADD COLUMN holder TEXT")
    conn.execute("UPDATE token_usage SET holder = user")
    conn.execute(
        "CREATE INDEX token_usage_holder_started ON token_usage (holder, started_at)"
    )


def m003_turn_parts_and_options(conn: sqlite3.Connection) -> None:
    """Per turn: the answer's parts as the provider sent them (thought signatures
    included), to send back in later turns (NULL when there is nothing beyond the text),
    and the web sources of a grounded answer (a JSON list of [title, site, url], NULL
    for none). Per conversation: its own system prompt and web search choice (NULL: the
    server's default)."""
    conn.execute("ALTER TABLE turns ADD COLUMN replay TEXT")
    conn.execute("ALTER TABLE turns ADD COLUMN sources TEXT")
    conn.execute("ALTER TABLE conversations ADD COLUMN system_prompt TEXT")
    conn.execute("ALTER TABLE conversations ADD COLUMN web INTEGER")


def m004_conversation_model(conn: sqlite3.Connection) -> None:
    """Per conversation: the model entry it answers with, chosen by ``/model`` (NULL: the
    model of its last answer, or the server's default)."""
    conn.execute("ALTER TABLE conversations ADD COLUMN model TEXT")


def m005_search_index(conn: sqlite3.Connection) -> None:
    """Full-text search of questions and answers (``/search``): an FTS5 index over
    ``turns`` (external content, so the text is stored once), kept in step by triggers,
    so every write (a question, each progress save of an answer still streaming, its
    finish, a delete) updates it in the same transaction. Existing turns are indexed."""
    conn.execute(
        "CREATE VIRTUAL TABLE turns_search USING fts5(question, answer, "
        "content='turns', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
    )
    conn.execute(
        "CREATE TRIGGER turns_search_insert AFTER INSERT ON turns BEGIN "
        "INSERT INTO turns_search (rowid, question, answer) "
        "VALUES (new.id, new.question, new.answer); END"
    )
    conn.execute(
        "CREATE TRIGGER turns_search_delete AFTER DELETE ON turns BEGIN "
        "INSERT INTO turns_search (turns_search, rowid, question, answer) "
        "VALUES ('delete', old.id, old.question, old.answer); END"
    )
    # Only a change of the indexed text re-indexes: a finish that keeps the text costs
    # nothing more.
    conn.execute(
        "CREATE TRIGGER turns_search_update AFTER UPDATE OF question, answer ON turns "
        "WHEN old.question IS NOT new.question OR old.answer IS NOT new.answer BEGIN "
        "INSERT INTO turns_search (turns_search, rowid, question, answer) "
        "VALUES ('delete', old.id, old.question, old.answer); "
        "INSERT INTO turns_search (rowid, question, answer) "
        "VALUES (new.id, new.question, new.answer); END"
    )
    conn.execute("INSERT INTO turns_search (turns_search) VALUES ('rebuild')")


def m006_turn_owner(conn: sqlite3.Connection) -> None:
    """Per turn: the store (worker process) that added it, so a worker starting beside
    live ones recovers only the answers of workers that died (NULL: unknown, before)."""
    conn.execute("ALTER TABLE turns ADD COLUMN owner TEXT")


def m007_workers(conn: sqlite3.Connection) -> None:
    """The worker processes sharing the store and the advisory lock key each holds while
    it lives (used on PostgreSQL; harmless and empty on SQLite)."""
    conn.execute(
        "CREATE TABLE workers (owner TEXT PRIMARY KEY, lock_key INTEGER NOT NULL, "
        "started_at TEXT NOT NULL)"
    )


def m008_shared_limits(conn: sqlite3.Connection) -> None:
    """The per-holder limits every worker shares (:mod:`._shared_limits`), used on
    PostgreSQL; on SQLite (one process, which keeps them in memory) they stay empty, so
    that both backends have one schema."""
    conn.execute(
        "CREATE TABLE limit_answers (holder TEXT PRIMARY KEY, owner TEXT NOT NULL, "
        "claim TEXT NOT NULL, since TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE limit_buckets (holder TEXT PRIMARY KEY, tokens REAL NOT NULL, "
        "at TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE limit_slots (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
        "held INTEGER NOT NULL DEFAULT 0, since TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE limit_seats (id INTEGER PRIMARY KEY, holder TEXT NOT NULL, "
        "kind TEXT NOT NULL, owner TEXT NOT NULL, since TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX limit_seats_holder ON limit_seats (holder, kind)")


def m009_accounts(conn: sqlite3.Connection) -> None:
    """Pending invites and the keys they enrolled (:mod:`._shared_accounts`), used on
    PostgreSQL so that every machine knows them; on SQLite (invites and keys are files
    beside ``users_dir``) they stay empty, so that both backends have one schema."""
    conn.execute(
        "CREATE TABLE invites (name TEXT PRIMARY KEY, salt BLOB NOT NULL, "
        "hash BLOB NOT NULL, profile TEXT, created_at TEXT NOT NULL, "
        "expires_at TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE enrolled_keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "key_data TEXT NOT NULL, line TEXT NOT NULL, added_at TEXT NOT NULL, "
        "UNIQUE (name, key_data))"
    )


def m010_worker_lost_at(conn: sqlite3.Connection) -> None:
    """Per worker: when a liveness check first saw its lock not held (NULL: held when
    last looked). A worker counts as dead only once lost for longer than ``[storage]
    owner_grace_ms``, so a live one reconnecting after a cut link keeps its answers and
    limits (used on PostgreSQL; harmless and empty on SQLite)."""
    conn.execute("ALTER TABLE workers ADD COLUMN lost_at TEXT")


def m011_slot_function(conn: sqlite3.Connection) -> None:
    """PostgreSQL only: taking an upstream slot, or a seat, is one call to a function, so
    the lock that orders it is held for the call alone, never across a busy worker's
    round trips. SQLite has no shared limits: nothing to do."""


Migration = Callable[[sqlite3.Connection], None]

# The order migrations are applied in: this list is the only place it is kept (a name's
# number is for reading; a gap is a migration of another branch still to land).
MIGRATIONS: tuple[Migration, ...] = (
    m001_initial,
    m002_token_holder,
    m003_turn_parts_and_options,
    m004_conversation_model,
    m005_search_index,
    m006_turn_owner,
    m007_workers,
    m008_shared_limits,
    m009_accounts,
    m010_worker_lost_at,
    m011_slot_function,
)

# The same migrations for PostgreSQL, by name. Times are timestamptz, flags boolean, ids
# identities (BY DEFAULT, so that `kindlessh migrate` can copy a SQLite store's ids).
# "user" is a reserved word there and is always quoted.
POSTGRES: dict[str, tuple[str, ...]] = {
    "m001_initial": (
        """
        CREATE TABLE conversations (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            "user" TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )
        """,
        'CREATE INDEX conversations_user_updated ON conversations ("user", updated_at)',
        """
        CREATE TABLE turns (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            conversation_id BIGINT NOT NULL
                REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            question TEXT NOT NULL,
            answer TEXT NOT NULL DEFAULT '',
            thoughts TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('streaming', 'done', 'stopped', 'failed')),
            note TEXT,
            finish_reason TEXT,
            input_tokens BIGINT,
            output_tokens BIGINT,
            thoughts_tokens BIGINT,
            started_at TIMESTAMPTZ NOT NULL,
            duration_ms BIGINT,
            incomplete BOOLEAN NOT NULL DEFAULT false
        )
        """,
        "CREATE UNIQUE INDEX turns_conversation_position ON turns (conversation_id, position)",
        "CREATE INDEX turns_streaming ON turns (state) WHERE state = 'streaming'",
        """
        CREATE TABLE token_usage (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            "user" TEXT NOT NULL,
            turn_id BIGINT UNIQUE REFERENCES turns (id) ON DELETE SET NULL,
            model TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            thoughts_tokens BIGINT NOT NULL
        )
        """,
        'CREATE INDEX token_usage_user_started ON token_usage ("user", started_at)',
    ),
    "m002_token_holder": (
        "ALTER TABLE token_usage ADD COLUMN holder TEXT",
        'UPDATE token_usage SET holder = "user"',
        "CREATE INDEX token_usage_holder_started ON token_usage (holder, started_at)",
    ),
    "m003_turn_parts_and_options": (
        "ALTER TABLE turns ADD COLUMN replay TEXT",
        "ALTER TABLE turns ADD COLUMN sources TEXT",
        "ALTER TABLE conversations ADD COLUMN system_prompt TEXT",
        "ALTER TABLE conversations ADD COLUMN web BOOLEAN",
    ),
    "m004_conversation_model": ("ALTER TABLE conversations ADD COLUMN model TEXT",),
    # A generated column is kept in step by the engine in the same statement as every
    # write, as SQLite's triggers do; 'simple' keeps words as typed (no stemming, no stop
    # words), as FTS5's unicode61 does.
    "m005_search_index": (
        "ALTER TABLE turns ADD COLUMN search tsvector GENERATED ALWAYS AS "
        "(to_tsvector('simple', question || ' ' || answer)) STORED",
        "CREATE INDEX turns_search ON turns USING gin (search)",
    ),
    "m006_turn_owner": ("ALTER TABLE turns ADD COLUMN owner TEXT",),
    "m007_workers": (
        "CREATE TABLE workers (owner TEXT PRIMARY KEY, lock_key INTEGER NOT NULL, "
        "started_at TIMESTAMPTZ NOT NULL)",
    ),
    # Each row names the worker (owner) that wrote it; a row of an owner no longer live
    # counts for nothing (see _shared_limits).
    "m008_shared_limits": (
        """
        CREATE TABLE limit_answers (
            holder TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            claim TEXT NOT NULL,
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        """
        CREATE TABLE limit_buckets (
            holder TEXT PRIMARY KEY,
            tokens DOUBLE PRECISION NOT NULL,
            at TIMESTAMPTZ NOT NULL
        )
        """,
        """
        CREATE TABLE limit_slots (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            owner TEXT NOT NULL,
            held BOOLEAN NOT NULL DEFAULT false,
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        """
        CREATE TABLE limit_seats (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            holder TEXT NOT NULL,
            kind TEXT NOT NULL,
            owner TEXT NOT NULL,
            since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        "CREATE INDEX limit_seats_holder ON limit_seats (holder, kind)",
    ),
    "m009_accounts": (
        """
        CREATE TABLE invites (
            name TEXT PRIMARY KEY,
            salt BYTEA NOT NULL,
            hash BYTEA NOT NULL,
            profile TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        )
        """,
        """
        CREATE TABLE enrolled_keys (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL,
            key_data TEXT NOT NULL,
            line TEXT NOT NULL,
            added_at TIMESTAMPTZ NOT NULL,
            UNIQUE (name, key_data)
        )
        """,
    ),
    "m010_worker_lost_at": ("ALTER TABLE workers ADD COLUMN lost_at TIMESTAMPTZ",),
    "m011_slot_function": (
        # Takes slot p_slot when fewer than p_size slots are held or queued ahead of it
        # (returns NULL), else returns how many are queued ahead; first forgets the slots
        # of owners not in p_live written before p_stamp (see _shared_limits).
        """
        CREATE FUNCTION kindlessh_take_slot(
            p_slot BIGINT, p_size INTEGER, p_live TEXT[], p_stamp TIMESTAMPTZ,
            p_lock BIGINT
        ) RETURNS INTEGER LANGUAGE plpgsql AS $$
        DECLARE
            n_held INTEGER;
            n_ahead INTEGER;
        BEGIN
            PERFORM pg_advisory_xact_lock(p_lock);
            DELETE FROM limit_slots s
                WHERE NOT (s.owner = ANY(p_live)) AND s.since < p_stamp;
            SELECT count(*) FILTER (WHERE held),
                   count(*) FILTER (WHERE NOT held AND id < p_slot)
                INTO n_held, n_ahead FROM limit_slots;
            IF n_held + n_ahead < p_size THEN
                UPDATE limit_slots SET held = TRUE WHERE id = p_slot;
                RETURN NULL;
            END IF;
            RETURN n_ahead;
        END
        $$
        """,
        # Counts one seat (a session or a connection) of p_holder against p_most over
        # every live owner: the new row's id, or NULL over the cap.
        """
        CREATE FUNCTION kindlessh_take_seat(
            p_holder TEXT, p_kind TEXT, p_owner TEXT, p_most INTEGER, p_live TEXT[],
            p_stamp TIMESTAMPTZ, p_lock INTEGER
        ) RETURNS BIGINT LANGUAGE plpgsql AS $$
        DECLARE
            n_seats INTEGER;
            new_id BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(p_lock, hashtext(p_holder));
            DELETE FROM limit_seats s WHERE s.holder = p_holder
                AND NOT (s.owner = ANY(p_live)) AND s.since < p_stamp;
            SELECT count(*) INTO n_seats FROM limit_seats
                WHERE holder = p_holder AND kind = p_kind;
            IF n_seats >= p_most THEN
                RETURN NULL;
            END IF;
            INSERT INTO limit_seats (holder, kind, owner) VALUES (p_holder, p_kind, p_owner)
                RETURNING id INTO new_id;
            RETURN new_id;
        END
        $$
        """,
    ),
}

# pg_advisory_xact_lock(MIGRATION_LOCK): the (fixed, arbitrary) key migrating holds.
MIGRATION_LOCK = 0x6B696E64  # "kind"


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    clock: Callable[[], datetime] = utcnow,
) -> list[str]:
    """Apply every migration not yet recorded in ``_migrations``, in order.

    Args:
        conn: a connection in autocommit mode (``isolation_level=None``).
        migrations: the migrations in order; names must be unique.
        clock: the time recorded as ``applied_at``.

    Returns:
        The names applied by this call (empty when the database was up to date).
    """
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied: list[str] = []
    for migration in migrations:
        name = migration.__name__
        with transaction(conn):
            # Checked inside the write lock: another process may have migrated meanwhile.
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                continue
            migration(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (name, stamp(clock())),
            )
        applied.append(name)
    return applied


# ----- opening ------------------------------------------------------------------------------


async def migrate_postgres(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    migrations: Sequence[str] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> list[str]:
    """Apply every PostgreSQL migration not yet recorded in ``_migrations``, in order.

    Args:
        conn: a connection in autocommit mode.
        migrations: migration names in order (default: all of :data:`MIGRATIONS`).
        clock: the time recorded as ``applied_at``.

    Returns:
        The names applied by this call (empty when the database was up to date).
    """
    names = [m.__name__ for m in MIGRATIONS] if migrations is None else list(migrations)
    applied: list[str] = []
    for name in names:
        async with conn.transaction():
            # Strategy: one lock per migration's transaction; a worker that waited finds
            # the record the other one committed and skips the migration.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations "
                "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ)"
            )
            cursor = await conn.execute("SELECT 1 FROM _migrations WHERE name = %s", (name,))
            if await cursor.fetchone():
                continue
            for statement in POSTGRES[name]:
                await conn.execute(statement.encode())
            await conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)", (name, clock())
            )
        applied.append(name)
    return applied
