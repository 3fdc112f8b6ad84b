"""The SQLite store (:class:`~kindlessh._store.Store`), without blocking the event loop.

Contract:
- :meth:`SqliteStore.open` opens the file as :mod:`._sqlite` does (private folder and file,
  ``quick_check``, WAL) and applies every migration of :mod:`._migrations` not yet
  recorded. Re-running migrations is a no-op.
- Every call runs on one dedicated thread that owns the only connection, so calls are
  carried out one at a time, in the order they were made, and the event loop only waits
  for their results. A call that was made is carried out even if the awaiting task is
  cancelled: the final write of an answer must land while a session is being torn down.
- Every read takes ``user``; nobody sees another user's rows. Writes take ids, which
  callers only get from their own user's reads and inserts.
- Writing a turn (progress, finish, delete) bumps its conversation's ``updated_at``.
- Questions and answers are indexed for full-text search (SQLite FTS5, kept in step by
  triggers in the same transaction as each write, so an answer still streaming is found
  by what it has saved so far); :meth:`SqliteStore.search` gives one user's matching turns,
  newest first, with a snippet.
- Text is stored raw, exactly as given; the display layer sanitises it.
- Times are stored as :mod:`._sqlite` stamps them and returned as aware
  :class:`~datetime.datetime` values.
- Token counts are :class:`~kindlessh._provider.Usage` values, stored in the columns
  ``input_tokens``, ``output_tokens`` and ``thoughts_tokens`` (no total: read back, the
  total is their sum). They go to a ledger (``token_usage``) when a turn finishes. The
  ledger outlives the turn, so deleting a conversation or retrying an answer does not
  give a user their budget back (DESIGN D5). Each ledger row names its *holder*
  (:mod:`._holders`: the user, or the shared key that asked, whatever name it typed),
  and daily sums (:meth:`SqliteStore.tokens_used`, :meth:`SqliteStore.token_counts`)
  are by holder.
- A damaged file, or a file or folder the server may not write, stops the start with
  :class:`StoreError`; every message names the file and says what to do, in one line.
- SQLite failures are raised as :class:`~kindlessh._errors.StoreError` (a missing
  conversation as its subclass ``ConversationNotFound``), whose message is for the
  reader.
- One process owns the file, so :meth:`SqliteStore.recover_interrupted` marks every
  answer still ``streaming``, and :meth:`SqliteStore.listen` has nothing to hear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar, cast

from ._errors import ConversationNotFound, InputRejected, StoreError
from ._migrations import migrate
from ._provider import Source, Usage
from ._rows import (
    INTERRUPTED_NOTE,
    MARK_END,
    MARK_START,
    SNIPPET_TOKENS,
    ConversationRow,
    FinalState,
    Options,
    SearchHit,
    StoredState,
    TurnRow,
    search_query,
)
from ._sqlite import explain, open_database, parse_time, stamp, transaction, utcnow

log = logging.getLogger("kindlessh.store")

T = TypeVar("T")

# ----- the store ----------------------------------------------------------------------------


_TURN_COLUMNS = (
    "id, conversation_id, position, question, answer, thoughts, model, state, note, "
    "finish_reason, input_tokens, output_tokens, thoughts_tokens, started_at, duration_ms, "
    "incomplete, replay, sources, owner"
)


# A conversation as listed: its row, turn count and the model of its last answer.
_LISTED = (
    "SELECT c.id, c.title, c.created_at, c.updated_at, "
    "(SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id), "
    "(SELECT t.model FROM turns t WHERE t.conversation_id = c.id "
    "ORDER BY t.position DESC LIMIT 1) "
    "FROM conversations c "
)


def _conversation_row(row: tuple[object, ...]) -> ConversationRow:
    id_, title, created, updated, count, model = row
    return ConversationRow(
        cast(int, id_), cast(str, title), parse_time(cast(str, created)),
        parse_time(cast(str, updated)), cast(int, count), cast("str | None", model) or "",
    )


def _turn_row(row: tuple[object, ...]) -> TurnRow:
    (id_, conversation_id, position, question, answer, thoughts, model, state, note,
     finish_reason, input_tokens, output_tokens, thoughts_tokens, started_at, duration_ms,
     incomplete, replay, sources, owner) = row  # fmt: skip
    return TurnRow(
        id=cast(int, id_),
        conversation_id=cast(int, conversation_id),
        position=cast(int, position),
        question=cast(str, question),
        answer=cast(str, answer),
        thoughts=cast(str, thoughts),
        model=cast(str, model),
        state=cast(StoredState, state),
        note=cast("str | None", note),
        finish_reason=cast("str | None", finish_reason),
        usage=_usage(
            cast("int | None", input_tokens),
            cast("int | None", output_tokens),
            cast("int | None", thoughts_tokens),
        ),
        started_at=parse_time(cast(str, started_at)),
        duration_ms=cast("int | None", duration_ms),
        incomplete=bool(incomplete),
        replay=cast("str | None", replay) or "",
        sources=_sources(cast("str | None", sources)),
        owner=cast("str | None", owner) or "",
    )


def _sources(text: str | None) -> tuple[Source, ...]:
    """Stored sources back as :class:`Source` values (a damaged value reads as none)."""
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    return tuple(
        Source(*(str(v) for v in item[:3]))
        for item in items if isinstance(item, list) and item
    ) if isinstance(items, list) else ()


def _usage(inputs: int | None, outputs: int | None, thoughts: int | None) -> Usage | None:
    """A turn's stored counts as :class:`Usage`; None when none was reported."""
    if inputs is None and outputs is None and thoughts is None:
        return None
    return Usage(inputs or 0, outputs or 0, thoughts or 0)


def _touch_conversation_of_turn(conn: sqlite3.Connection, turn_id: int, now: str) -> None:
    conn.execute(
        "UPDATE conversations SET updated_at = ? "
        "WHERE id = (SELECT conversation_id FROM turns WHERE id = ?)",
        (now, turn_id),
    )


def _open(path: Path, clock: Callable[[], datetime]) -> sqlite3.Connection:
    """Open the database and bring its schema up to date; runs on the store's thread."""
    conn = open_database(path)
    try:
        applied = migrate(conn, clock=clock)
    except BaseException:
        conn.close()
        raise
    if applied:
        log.info("store %s: applied migrations %s", path, ", ".join(applied))
    return conn


class SqliteStore:
    """The SQLite store; make one with :meth:`open`, end it with :meth:`close`."""

    def __init__(
        self,
        path: Path,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        clock: Callable[[], datetime],
        owner: str | None = None,
    ) -> None:
        """Private: use :meth:`open`."""
        self.path = path
        self._owner = owner
        self._executor = executor
        self._conn = conn
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
    ) -> SqliteStore:
        """Open the store at ``path``, creating and migrating it as needed.

        Args:
            path: the database file; missing directories are created with mode 0700.
            clock: returns the current time, aware (injectable for tests).
            owner: the name stored on the turns this store adds (None: none).

        Raises:
            StoreError: the file cannot be created, opened or written, is not a
                database, is damaged (``PRAGMA quick_check``), cannot use WAL, or a
                migration failed; the message is one line naming the file and the fix.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kindlessh-store")
        try:
            future = executor.submit(_open, path, clock)
            conn = await asyncio.shield(asyncio.wrap_future(future))
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StoreError(explain(path, exc)) from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, conn, clock, owner)

    async def close(self) -> None:
        """Finish every call already made, then close the database. Safe to call twice."""
        if self._closed:
            return
        self._closed = True

        def finish(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("PRAGMA optimize")
            finally:
                conn.close()

        try:
            await self._submit(finish)
        finally:
            # The close job was the last in the queue, so the thread is idle now.
            self._executor.shutdown(wait=False)

    @property
    def owner(self) -> str:
        """The name stored on the turns this store adds ("" for none)."""
        return self._owner or ""

    async def listen(self, callback: Callable[[str, int, int], None]) -> None:
        """Nothing to hear: one process owns a SQLite store, and its hub already knows
        every turn it writes."""

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _now(self) -> str:
        return stamp(self._clock())

    async def _call(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the conversation store is closed")
        return await self._submit(job)

    async def _submit(self, job: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn

        def run() -> T:
            try:
                return job(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"The conversation store failed: {exc}.") from exc

        # Strategy: shield, so that cancelling the awaiting task never cancels a job still
        # queued; the job runs and only its result is dropped (see the module contract).
        future = self._executor.submit(run)
        return await asyncio.shield(asyncio.wrap_future(future))

    # ----- conversations --------------------------------------------------------------------

    async def new_conversation(self, user: str, title: str) -> int:
        """Create an empty conversation for ``user``.

        Returns:
            The new conversation's id.
        """
        now = self._now()

        def job(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO conversations (user, title, created_at, updated_at) "
                "VALUES (?, ?, ?, ?)",
                (user, title, now, now),
            )
            return cast(int, cursor.lastrowid)

        return await self._call(job)

    async def list_conversations(
        self, user: str, limit: int = 50, offset: int = 0
    ) -> list[ConversationRow]:
        """``user``'s conversations, most recently updated first (newest id on ties).

        Args:
            limit: at most this many rows.
            offset: skip this many rows first (for paging).
        """

        def job(conn: sqlite3.Connection) -> list[ConversationRow]:
            rows = conn.execute(
                _LISTED + "WHERE c.user = ? "
                "ORDER BY c.updated_at DESC, c.id DESC LIMIT ? OFFSET ?",
                (user, limit, offset),
            ).fetchall()
            return [_conversation_row(row) for row in rows]

        return await self._call(job)

    async def search(
        self, user: str, words: str, limit: int = 20, offset: int = 0
    ) -> list[SearchHit]:
        """``user``'s turns whose question or answer match ``words`` (see
        :func:`search_query`: words, ``"a phrase"``, ``prefix*``), newest first.

        Raises:
            InputRejected: nothing searchable in ``words``.
        """
        query = search_query(words)
        if not query:
            raise InputRejected("Give words to search for: /search paris museum")

        def job(conn: sqlite3.Connection) -> list[SearchHit]:
            rows = conn.execute(
                "SELECT t.conversation_id, t.position, c.title, t.started_at, "
                "snippet(turns_search, -1, ?, ?, '…', ?) "
                "FROM turns_search JOIN turns t ON t.id = turns_search.rowid "
                "JOIN conversations c ON c.id = t.conversation_id "
                "WHERE turns_search MATCH ? AND c.user = ? "
                "ORDER BY t.started_at DESC, t.id DESC LIMIT ? OFFSET ?",
                (MARK_START, MARK_END, SNIPPET_TOKENS, query, user, limit, offset),
            ).fetchall()
            return [
                SearchHit(cid, pos, title, parse_time(started), snippet)
                for cid, pos, title, started, snippet in rows
            ]

        return await self._call(job)

    async def get_conversation(self, user: str, conversation_id: int) -> ConversationRow:
        """One of ``user``'s conversations.

        Raises:
            ConversationNotFound: no such conversation of this user.
        """

        def job(conn: sqlite3.Connection) -> ConversationRow | None:
            row = conn.execute(
                _LISTED + "WHERE c.user = ? AND c.id = ?", (user, conversation_id)
            ).fetchone()
            return None if row is None else _conversation_row(row)

        found = await self._call(job)
        if found is None:
            raise ConversationNotFound(f"No conversation {conversation_id}.")
        return found

    async def conversation_options(self, user: str, conversation_id: int) -> Options:
        """One of ``user``'s conversations' own choices (system prompt, web search,
        model entry; None: the server's default)."""

        def job(conn: sqlite3.Connection) -> Options:
            row = conn.execute(
                "SELECT system_prompt, web, model FROM conversations "
                "WHERE id = ? AND user = ?",
                (conversation_id, user),
            ).fetchone()
            if row is None:
                raise ConversationNotFound(f"No conversation {conversation_id}.")
            web = None if row[1] is None else bool(row[1])
            return Options(cast("str | None", row[0]), web, cast("str | None", row[2]))

        return await self._call(job)

    async def set_conversation_options(self, conversation_id: int, options: Options) -> None:
        """Store a conversation's own choices."""
        web = None if options.web is None else int(options.web)

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "UPDATE conversations SET system_prompt = ?, web = ?, model = ? "
                    "WHERE id = ?",
                    (options.system_prompt, web, options.model, conversation_id),
                )

        await self._call(job)

    async def latest_conversation(self, user: str) -> int | None:
        """The id of ``user``'s most recently updated conversation, or ``None``."""

        def job(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT id FROM conversations WHERE user = ? "
                "ORDER BY updated_at DESC, id DESC LIMIT 1",
                (user,),
            ).fetchone()
            return None if row is None else cast(int, row[0])

        return await self._call(job)

    async def load_turns(self, user: str, conversation_id: int) -> list[TurnRow]:
        """The turns of one of ``user``'s conversations, in order.

        Raises:
            ConversationNotFound: no such conversation, or it is not ``user``'s.
        """

        def job(conn: sqlite3.Connection) -> list[TurnRow]:
            owned = conn.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND user = ?",
                (conversation_id, user),
            ).fetchone()
            if owned is None:
                raise ConversationNotFound(f"No conversation {conversation_id}.")
            rows = conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
            return [_turn_row(row) for row in rows]

        return await self._call(job)

    async def get_turn(self, user: str, turn_id: int) -> TurnRow:
        """One of ``user``'s turns.

        Raises:
            ConversationNotFound: no such turn, or it is not ``user``'s.
        """

        def job(conn: sqlite3.Connection) -> TurnRow | None:
            row = conn.execute(
                f"SELECT {', '.join('t.' + c for c in _TURN_COLUMNS.split(', '))} "
                "FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                "WHERE t.id = ? AND c.user = ?",
                (turn_id, user),
            ).fetchone()
            return None if row is None else _turn_row(row)

        found = await self._call(job)
        if found is None:
            raise ConversationNotFound(f"No turn {turn_id}.")
        return found

    async def delete_conversation(self, user: str, conversation_id: int) -> bool:
        """Delete one of ``user``'s conversations and its turns (not its token usage).

        Returns:
            False when there was no such conversation for ``user``.
        """

        def job(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)
            )
            return cursor.rowcount > 0

        return await self._call(job)

    # ----- turns ----------------------------------------------------------------------------

    async def add_turn(self, conversation_id: int, question: str, model: str) -> int:
        """Start a turn at the end of a conversation: state ``streaming``, incomplete,
        empty answer.

        Returns:
            The new turn's id.

        Raises:
            ConversationNotFound: the conversation does not exist (any more).
        """
        now = self._now()

        def job(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                exists = conn.execute(
                    "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                if exists is None:
                    raise ConversationNotFound(f"No conversation {conversation_id}.")
                cursor = conn.execute(
                    "INSERT INTO turns (conversation_id, position, question, answer, thoughts, "
                    "model, state, started_at, incomplete, owner) "
                    "SELECT ?, COALESCE(MAX(position), 0) + 1, ?, '', '', ?, 'streaming', ?, "
                    "1, ? FROM turns WHERE conversation_id = ?",
                    (conversation_id, question, model, now, self._owner, conversation_id),
                )
                conn.execute(
                    "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
                )
                return cast(int, cursor.lastrowid)

        return await self._call(job)

    async def save_progress(self, turn_id: int, answer: str, thoughts: str) -> bool:
        """Commit the text streamed so far (the whole text, not a delta).

        Returns:
            False when the turn no longer exists or is no longer streaming; a late
            progress save never overwrites a finished turn.
        """
        now = self._now()

        def job(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cursor = conn.execute(
                    "UPDATE turns SET answer = ?, thoughts = ? "
                    "WHERE id = ? AND state = 'streaming'",
                    (answer, thoughts, turn_id),
                )
                if cursor.rowcount == 0:
                    return False
                _touch_conversation_of_turn(conn, turn_id, now)
                return True

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
        """Store a turn's final text and outcome, and record its tokens in the ledger.

        Args:
            state: ``done``, ``stopped`` or ``failed``.
            incomplete: True when the answer did not end normally.
            note: why it ended early, in words for the reader.
            finish_reason: the upstream's own word for the end, kept as received.
            usage: the answer's last token counts, if any were reported.
            duration_ms: how long the answer took.
            holder: whose limits the question spent (default: the conversation's user).
            replay: the provider's record of the answer, to send back later (or "").
            sources: the web sources of a grounded answer.

        Returns:
            False when the turn no longer exists (its conversation was deleted meanwhile).

        Raises:
            ValueError: ``state`` is not a final state.
        """
        if state not in ("done", "stopped", "failed"):
            raise ValueError(f"not a final state: {state!r}")
        stored_sources = (
            json.dumps([[s.title, s.site, s.url] for s in sources], ensure_ascii=False)
            if sources else None
        )
        now = self._now()
        counts = (
            (None, None, None)
            if usage is None
            else (usage.input_tokens, usage.output_tokens, usage.thoughts_tokens)
        )

        def job(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cursor = conn.execute(
                    "UPDATE turns SET answer = ?, thoughts = ?, state = ?, note = ?, "
                    "finish_reason = ?, input_tokens = ?, output_tokens = ?, "
                    "thoughts_tokens = ?, duration_ms = ?, incomplete = ?, replay = ?, "
                    "sources = ? WHERE id = ?",
                    (answer, thoughts, state, note, finish_reason, *counts, duration_ms,
                     int(incomplete), replay or None, stored_sources, turn_id),
                )  # fmt: skip
                if cursor.rowcount == 0:
                    return False
                if usage is not None and usage.counted:
                    # An upsert: finishing a turn twice replaces its ledger entry.
                    conn.execute(
                        "INSERT INTO token_usage (user, holder, turn_id, model, started_at, "
                        "input_tokens, output_tokens, thoughts_tokens) "
                        "SELECT c.user, COALESCE(?, c.user), t.id, t.model, t.started_at, "
                        "?, ?, ? "
                        "FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                        "WHERE t.id = ? "
                        "ON CONFLICT (turn_id) DO UPDATE SET input_tokens = excluded.input_tokens, "
                        "output_tokens = excluded.output_tokens, "
                        "thoughts_tokens = excluded.thoughts_tokens",
                        (holder, *counts, turn_id),
                    )
                _touch_conversation_of_turn(conn, turn_id, now)
                return True

        return await self._call(job)

    async def delete_turn(self, turn_id: int) -> bool:
        """Delete a turn (``/retry`` replaces the last answer); its token usage stays.

        Returns:
            False when the turn did not exist.
        """
        now = self._now()

        def job(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                _touch_conversation_of_turn(conn, turn_id, now)
                cursor = conn.execute("DELETE FROM turns WHERE id = ?", (turn_id,))
                return cursor.rowcount > 0

        return await self._call(job)

    async def recover_interrupted(self) -> int:
        """Mark every turn still ``streaming`` as stopped and incomplete.

        Call it once at start-up, before any session opens: it cannot tell an answer left
        over from a crash from one streaming now.

        Conversations keep their ``updated_at``: a restart is not the reader's activity
        and must not reorder their list.

        Returns:
            How many turns were marked.
        """

        def job(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE turns SET state = 'stopped', incomplete = 1, note = ? "
                "WHERE state = 'streaming'",
                (INTERRUPTED_NOTE,),
            )
            return cursor.rowcount

        count = await self._call(job)
        if count:
            log.warning("marked %d interrupted answer(s) as stopped", count)
        return count

    async def tokens_used(self, holder: str, since: datetime) -> int:
        """Input, output and thinking tokens of ``holder``'s turns started at or after
        ``since``, under any name, including turns since deleted (for a daily budget).

        Raises:
            ValueError: ``since`` is naive.
        """
        return (await self.token_counts(holder, since)).counted

    async def token_counts(self, holder: str, since: datetime) -> Usage:
        """The tokens of :meth:`tokens_used`, by kind (input, output, thinking).

        Raises:
            ValueError: ``since`` is naive.
        """
        since_text = stamp(since)

        def job(conn: sqlite3.Connection) -> Usage:
            row = conn.execute(
                "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
                "COALESCE(SUM(thoughts_tokens), 0) FROM token_usage "
                "WHERE holder = ? AND started_at >= ?",
                (holder, since_text),
            ).fetchone()
            # No total column: the day's total is the sum of the three kinds.
            return Usage(int(row[0]), int(row[1]), int(row[2]))

        return await self._call(job)
