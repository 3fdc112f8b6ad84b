"""The conversation store's interface: its rows, its methods, and the choice of backend.

Contract:
- :func:`open_store` opens the store ``[storage]`` names: SQLite at ``path`` (the default,
  :mod:`._sqlite_store`) or PostgreSQL at ``url`` (:mod:`._pg_store`). Both apply the same
  migrations (:mod:`._migrations`) and keep the same guarantees, which :class:`Store`
  states method by method.
- Every write is its own committed transaction: a crash loses at most what was not yet
  written (an answer's last ``commit_interval_ms``). Every read takes ``user``; nobody
  sees another user's rows. Writes take ids, which callers only get from their own
  user's reads and inserts.
- Text is stored raw, exactly as given; the display layer sanitises it. Times come back
  as aware :class:`~datetime.datetime` values.
- Failures are :class:`~kindlessh._errors.StoreError` (a missing conversation as its
  subclass ``ConversationNotFound``), whose message is one line for the reader; both are
  re-exported from here.
- The rows and words live in :mod:`._rows` and are re-exported from here.
- Each store has an *owner*, the name of the worker process it serves, stored on the
  turns it adds; on PostgreSQL a worker's owner is *live* while its process holds its
  advisory lock, and start-up recovery cuts only the answers of owners no longer live.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from ._errors import ConversationNotFound as ConversationNotFound
from ._errors import StoreError as StoreError
from ._provider import Source, Usage
from ._rows import DEAD_OWNER_NOTE as DEAD_OWNER_NOTE
from ._rows import INTERRUPTED_NOTE as INTERRUPTED_NOTE
from ._rows import MARK_END as MARK_END
from ._rows import MARK_START as MARK_START
from ._rows import SNIPPET_TOKENS as SNIPPET_TOKENS
from ._rows import ConversationRow as ConversationRow
from ._rows import FinalState as FinalState
from ._rows import Options as Options
from ._rows import SearchHit as SearchHit
from ._rows import StoredState as StoredState
from ._rows import TurnRow as TurnRow
from ._rows import search_query as search_query
from ._rows import search_terms as search_terms
from ._sqlite import utcnow

if TYPE_CHECKING:
    from ._config import StorageConfig


class Store(Protocol):
    """What every backend offers; open one with :func:`open_store`."""

    @property
    def owner(self) -> str:
        """The worker this store serves, stored on the turns it adds ("" for none)."""
        ...

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        ...

    async def close(self) -> None:
        """Finish every call already made, then close. Safe to call twice."""
        ...

    # ----- conversations --------------------------------------------------------------

    async def new_conversation(self, user: str, title: str) -> int:
        """Create an empty conversation for ``user``; returns its id."""
        ...

    async def list_conversations(
        self, user: str, limit: int = 50, offset: int = 0
    ) -> list[ConversationRow]:
        """``user``'s conversations, most recently updated first (newest id on ties)."""
        ...

    async def search(
        self, user: str, words: str, limit: int = 20, offset: int = 0
    ) -> list[SearchHit]:
        """``user``'s turns whose question or answer match ``words`` (see
        :func:`search_terms`), newest first, each with a snippet; an answer still
        streaming is found by what it has saved so far.

        Raises:
            InputRejected: nothing searchable in ``words``.
        """
        ...

    async def get_conversation(self, user: str, conversation_id: int) -> ConversationRow:
        """One of ``user``'s conversations (ConversationNotFound if not theirs)."""
        ...

    async def conversation_options(self, user: str, conversation_id: int) -> Options:
        """One of ``user``'s conversations' own choices (ConversationNotFound)."""
        ...

    async def set_conversation_options(self, conversation_id: int, options: Options) -> None:
        """Store a conversation's own choices."""
        ...

    async def latest_conversation(self, user: str) -> int | None:
        """The id of ``user``'s most recently updated conversation, or ``None``."""
        ...

    async def load_turns(self, user: str, conversation_id: int) -> list[TurnRow]:
        """The turns of one of ``user``'s conversations, in order (ConversationNotFound)."""
        ...

    async def get_turn(self, user: str, turn_id: int) -> TurnRow:
        """One of ``user``'s turns (ConversationNotFound when it is not theirs or gone)."""
        ...

    async def delete_conversation(self, user: str, conversation_id: int) -> bool:
        """Delete one of ``user``'s conversations and its turns (not its token usage);
        False when there was none."""
        ...

    # ----- turns ------------------------------------------------------------------------

    async def add_turn(self, conversation_id: int, question: str, model: str) -> int:
        """Start a turn at the end of a conversation (``streaming``, incomplete, empty
        answer, owned by this store's owner); returns its id (ConversationNotFound)."""
        ...

    async def save_progress(self, turn_id: int, answer: str, thoughts: str) -> bool:
        """Commit the text streamed so far; False when the turn is gone or no longer
        streaming (a late save never overwrites a finished turn)."""
        ...

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
        """Store a turn's final text and outcome and record its tokens in the ledger;
        False when the turn is gone (ValueError for a state that is not final)."""
        ...

    async def delete_turn(self, turn_id: int) -> bool:
        """Delete a turn (``/retry``); its token usage stays. False when there was none."""
        ...

    async def recover_interrupted(self) -> int:
        """Mark answers left ``streaming`` by a stopped server as stopped and incomplete
        (SQLite: all of them; PostgreSQL: those of owners no longer live); returns how
        many. Conversations keep their ``updated_at``."""
        ...

    async def tokens_used(self, holder: str, since: datetime) -> int:
        """Tokens of ``holder``'s turns started at or after ``since`` (ValueError if
        naive), turns since deleted included."""
        ...

    async def token_counts(self, holder: str, since: datetime) -> Usage:
        """The tokens of :meth:`tokens_used`, by kind."""
        ...

    async def listen(self, callback: Callable[[str, int, int], None]) -> None:
        """Call ``callback(user, conversation_id, turn_id)`` for every turn written by
        any store on the same database from now on (PostgreSQL; SQLite: never); a
        ``turn_id`` of 0 says the whole conversation was deleted."""
        ...


async def open_store(
    storage: StorageConfig,
    *,
    clock: Callable[[], datetime] = utcnow,
    owner: str | None = None,
) -> Store:
    """Open the store ``storage`` names, creating and migrating it as needed.

    Args:
        storage: ``[storage]``: ``url`` (PostgreSQL) if set, else the SQLite ``path``.
        clock: returns the current time, aware (injectable for tests).
        owner: the worker's name stored on its turns (PostgreSQL makes one if None).

    Raises:
        StoreError: the store cannot be opened; the message says what to do.
    """
    if storage.url:
        # Imported when chosen: each backend module builds on this interface.
        from ._pg_store import PostgresStore

        return await PostgresStore.open(
            storage.url, clock=clock, owner=owner, grace=storage.owner_grace_ms / 1000
        )
    from ._sqlite_store import SqliteStore

    return await SqliteStore.open(storage.path, clock=clock, owner=owner)


async def bring_up_to_date(storage: StorageConfig) -> None:
    """Open the store ``storage`` names once, so its schema is migrated, and close it: a
    pre-fork parent does this before its workers start, so none migrates while another
    is using the store.

    Raises:
        StoreError: the store cannot be opened.
    """
    store = await open_store(storage)
    await store.close()
