"""The live conversations of every user, shared by their connections.

Contract:
- A :class:`LiveConversation` (``chat`` in variable names) is one conversation in
  memory with its recorder and the number of screens showing it. A user's connections
  share their chats: a second connection, or a
  reconnection while an answer is still coming, attaches to the same chat and sees it
  stream live.
- :meth:`Hub.resume` gives a connection the user's chat to start with: the one most
  recently in use if it is still in memory, otherwise the latest stored conversation,
  otherwise a new one. Every chat handed out is given back with :meth:`Hub.release`.
- When the last screen leaves a chat whose answer is still coming, the answer goes on
  to the end and is saved (``finish_on_disconnect``), or is stopped and saved as it
  stands. A chat with no screen and no answer leaves memory; the store keeps it.
- Users only ever reach their own conversations.
- Every connection's first chat (:meth:`Hub.resume`) first has the tokens of today of
  the login's holder (:mod:`._holders`; the user name when none is given) loaded into
  the quota, so the budget holds across restarts. Conversations
  belong to the name; limits and token counts to the holder.
- :meth:`Hub.aclose` (server shutdown) stops every answer, marking it interrupted, saves
  everything and closes the store.
- With a shared store (PostgreSQL, several processes), a chat is live across processes
  (:meth:`Hub.start` listens to the store's notifications): a conversation opened while
  another live process answers its last turn follows that answer (:mod:`._follow`) to
  its end; a conversation in memory here takes in the turns other processes add (and
  follows one still streaming) and lets go of the turns they delete, so a screen never
  attaches to a stale chat. Ctrl-C on a followed answer asks its owner to stop it; the
  owner stops it as if its own screen had asked. A followed answer whose owner died is
  marked interrupted (by the follower, or when it is opened). With SQLite everything
  stays in this process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from . import _export
from ._conversation import Conversation, Turn, TurnState
from ._errors import ConversationNotFound, StoreError
from ._follow import Follower, SharedStore
from ._models import Models
from ._provider import Usage
from ._quota import Quota, day_start
from ._recorder import Recorder
from ._store import INTERRUPTED_NOTE, ConversationRow, Options, SearchHit, Store, TurnRow

log = logging.getLogger("kindlessh.hub")


class LiveConversation:
    """One conversation in memory, its recorder, and how many screens show it."""

    def __init__(self, user: str, conversation: Conversation, recorder: Recorder) -> None:
        self.user = user
        self.conversation = conversation
        self.recorder = recorder
        self.viewers = 0
        self.closed = False  # leaving memory: never handed out again
        self.dropped = asyncio.Event()  # set once it has left memory, everything saved
        self.used = 0  # a counter stamp: the chat a user touched last wins in resume
        # Its latest answer finished after its last screen left; the next screen to
        # resume it opens on that answer's first page (taken by that screen).
        self.finished_away = False
        self.follower: Follower | None = None  # another process's answer, followed here
        self.refreshing: asyncio.Task[None] | None = None  # reading the store again
        self.refresh_again = False  # another process wrote meanwhile: read once more

    @property
    def id(self) -> int | None:
        """The stored conversation's id, None until its first question is saved."""
        return self.recorder.conversation_id


def _turn_from_row(row: TurnRow, *, live: bool = False) -> Turn:
    """A stored turn in memory; ``live``: a streaming row about to be followed stays
    active (otherwise one still marked streaming shows as stopped)."""
    state: TurnState = row.state if row.state != "streaming" else "stopped"
    if live and row.state == "streaming":
        state = "streaming" if row.answer else "waiting"
    turn = Turn(
        row.question,
        answer=row.answer,
        thoughts=row.thoughts,
        state=state,
        note=row.note,
        finish_reason=row.finish_reason or "",
        # Stored as the outcome: an answer that ended early stays marked so.
        cut=row.incomplete,
        usage=row.usage,
        replay=row.replay,
        sources=row.sources,
        model=row.model,
    )
    turn.duration = (row.duration_ms or 0) / 1000
    return turn


class Hub:
    """Every user's chats in memory, over one store.

    Args:
        store: where conversations are kept.
        make_conversation: a new, empty conversation of a user (provider, settings and
            the user's quota bound).
        quota: the limits the conversations are held to (the hub loads usage into it).
        commit_interval: seconds between saves of a streaming answer.
        finish_on_disconnect: whether an answer goes on when its last screen leaves.
        export_dir: the folder under which each user's exports are written.
        models: the configured model entries a conversation may switch between.
        follow_check: seconds a follower waits without news before it asks whether
            the answer's owner is still alive (``[storage] follow_check_ms``).
        shared: the store is shared with other processes (PostgreSQL).
    """

    def __init__(
        self,
        store: Store,
        make_conversation: Callable[[str], Conversation],
        *,
        quota: Quota,
        commit_interval: float,
        finish_on_disconnect: bool,
        export_dir: Path,
        models: Models | None = None,
        follow_check: float = 1.0,
        shared: bool = False,
    ) -> None:
        self.store = store
        self.follow_check = follow_check
        # Shared by several processes (PostgreSQL): answers of others are followed.
        self.shared = shared
        self.models = models  # the configured model entries (/model), if known
        self.make_conversation = make_conversation
        self.quota = quota
        self.commit_interval = commit_interval
        self.finish_on_disconnect = finish_on_disconnect
        self.export_dir = export_dir
        self.chats: list[LiveConversation] = []
        self._stamp = 0
        self._closing: set[asyncio.Task[None]] = set()
        # user -> the conversation whose answer finished with no screen on it (the chat
        # may have left memory by the time the user comes back). One entry a user.
        self._away: dict[str, int] = {}

    # ----- handing chats out ----------------------------------------------------------

    def _attach(self, chat: LiveConversation) -> LiveConversation:
        self._stamp += 1
        chat.viewers += 1
        chat.used = self._stamp
        if self.shared and chat.id is not None:
            # Strategy: notifications keep a chat in memory in step; one more read as a
            # screen attaches covers what was written while it loaded or went unheard.
            self._refresh_soon(chat)
        return chat

    def _new_chat(
        self,
        user: str,
        conversation_id: int | None = None,
        rows: list[TurnRow] | None = None,
        options: Options | None = None,
    ) -> LiveConversation:
        conversation = self.make_conversation(user)
        options = options or Options()
        conversation.system_prompt, conversation.web = options.system_prompt, options.web
        saved: dict[Turn, int] = {}
        rows = rows or []
        followed = rows[-1] if rows and self._others(rows[-1]) else None
        for row in rows:
            turn = _turn_from_row(row, live=row is followed)
            previous = conversation.turns[-1].model if conversation.turns else turn.model
            turn.model_changed = turn.model != previous
            conversation.turns.append(turn)
            saved[turn] = row.id
        chosen = self.models.get(options.model) if self.models and options.model else None
        if chosen is not None and options.model is not None:
            conversation.use(options.model, chosen)
        elif conversation.turns and self.models is not None:
            self._reopen_model(conversation)
        recorder = Recorder(
            self.store,
            conversation,
            user,
            interval=self.commit_interval,
            conversation_id=conversation_id,
            saved=saved,
        )
        chat = LiveConversation(user, conversation, recorder)
        self.chats.append(chat)
        if followed is not None:
            turn = conversation.turns[-1]
            recorder.adopt(turn, followed.id)
            self._follow(chat, turn, followed)
        return chat

    def _reopen_model(self, conversation: Conversation) -> None:
        """A reopened conversation goes on with the model of its last answer, when an
        entry still serves that model."""
        assert self.models is not None
        last = conversation.turns[-1].model
        if conversation.provider.model == last:
            return
        for name in self.models.names:
            provider = self.models.get(name)
            if provider is not None and provider.model == last:
                conversation.use(name, provider)
                return

    async def _dropping(self, user: str) -> None:
        """Wait until ``user``'s chats that are leaving memory have saved their last
        words: read before that, the store would give a reconnecting screen an answer
        cut short."""
        for chat in [c for c in self.chats if c.user == user and c.closed]:
            await chat.dropped.wait()

    async def resume(self, user: str, *, holder: str | None = None) -> LiveConversation:
        """The chat a new connection of ``user`` starts with (see the module contract);
        ``holder`` holds the login (default: the name)."""
        await self.quota.load(holder or user)
        await self._dropping(user)
        away = self._away.pop(user, None)
        mine = [c for c in self.chats if c.user == user and not c.closed]
        chat = await self._resumed(user, mine)
        if away is not None and chat.id == away:
            chat.finished_away = True
        return chat

    async def _resumed(self, user: str, mine: list[LiveConversation]) -> LiveConversation:
        if mine:
            return self._attach(max(mine, key=lambda c: c.used))
        latest = await self.store.latest_conversation(user)
        if latest is not None:
            with contextlib.suppress(ConversationNotFound):
                return await self.open(user, latest)
        return self.new(user)

    def new(self, user: str) -> LiveConversation:
        """A fresh chat for ``user`` (stored from its first question on)."""
        return self._attach(self._new_chat(user))

    async def open(self, user: str, conversation_id: int) -> LiveConversation:
        """``user``'s stored conversation ``conversation_id``, live if it is in memory.

        Raises:
            ConversationNotFound: no such conversation of this user.
        """
        await self._dropping(user)
        for chat in self.chats:
            if chat.user == user and chat.id == conversation_id and not chat.closed:
                return self._attach(chat)
        rows = await self.store.load_turns(user, conversation_id)
        if rows and self._others(rows[-1]):
            rows = await self._unless_orphaned(user, conversation_id, rows)
        options = await self.store.conversation_options(user, conversation_id)
        # Loading awaited: another connection may have opened it meanwhile.
        for chat in self.chats:
            if chat.user == user and chat.id == conversation_id and not chat.closed:
                return self._attach(chat)
        return self._attach(self._new_chat(user, conversation_id, rows, options))

    # ----- other processes (a shared store) ---------------------------------------------

    @property
    def _shared_store(self) -> SharedStore:
        # Only a shared store's hub follows; PostgresStore offers these.
        return cast(SharedStore, self.store)

    def _others(self, row: TurnRow) -> bool:
        """True when ``row`` is an answer in flight in another process (shared store)."""
        return self.shared and row.state == "streaming" and row.owner != self.store.owner

    async def _unless_orphaned(
        self, user: str, conversation_id: int, rows: list[TurnRow]
    ) -> list[TurnRow]:
        """``rows``, with the last answer marked interrupted first if the process that
        owned it is gone."""
        owner = rows[-1].owner
        if owner and owner in await self._shared_store.live_owners():
            return rows
        await self.store.recover_interrupted()
        return await self.store.load_turns(user, conversation_id)

    async def start(self) -> None:
        """Listen to the other processes' writes (a shared store; nothing with SQLite)."""
        if not self.shared:
            return
        await self.store.listen(self._heard)
        await self._shared_store.listen_stops(self._stop_asked)

    def _follow(self, chat: LiveConversation, turn: Turn, row: TurnRow) -> None:
        """Follow ``turn``, stored row ``row`` owned by another process, as ``chat``'s
        answer in flight."""
        conversation = chat.conversation
        follower = Follower(
            self._shared_store, chat.user, row.id, row.owner, turn,
            conversation.changed, check=self.follow_check,
        )

        async def run() -> None:
            try:
                await follower.run()
            finally:
                if chat.follower is follower:
                    chat.follower = None
                if not turn.active:
                    chat.recorder.settle(turn)

        def ask_stop(why: str) -> None:
            self._spawn(self._ask_stop(chat.user, row.id))

        chat.follower = follower
        conversation.follow(turn, run(), ask_stop)

    async def _ask_stop(self, user: str, turn_id: int) -> None:
        try:
            await self._shared_store.ask_stop(user, turn_id)
        except StoreError as exc:
            log.warning("asking to stop answer %d failed: %s", turn_id, exc)

    def _stop_asked(self, user: str, turn_id: int) -> None:
        """Another process's screen pressed Ctrl-C on an answer this one owns."""
        for chat in self.chats:
            turn = chat.conversation.current
            if (
                chat.user == user and turn is not None
                and chat.recorder.stored_id(turn) == turn_id
                and chat.conversation.answering and not chat.conversation.following
            ):
                chat.conversation.stop()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _heard(self, user: str, conversation_id: int, turn_id: int) -> None:
        """A turn was written (by any process): bring the chats in memory in step."""
        for chat in self.chats:
            if chat.user != user or chat.id != conversation_id or chat.closed:
                continue
            if chat.follower is not None and chat.follower.turn_id == turn_id:
                chat.follower.poke()
            elif not chat.recorder.added(turn_id):
                self._refresh_soon(chat)

    def _refresh_soon(self, chat: LiveConversation) -> None:
        """Read ``chat`` from the store again, once at a time (writes heard meanwhile
        make one more read)."""
        if chat.refreshing is not None:
            chat.refresh_again = True
            return

        async def run() -> None:
            try:
                while True:
                    chat.refresh_again = False
                    await self._refresh(chat)
                    if not chat.refresh_again or chat.closed:
                        return
            finally:
                chat.refreshing = None

        chat.refreshing = asyncio.get_running_loop().create_task(run())
        self._closing.add(chat.refreshing)
        chat.refreshing.add_done_callback(self._closing.discard)

    async def _refresh(self, chat: LiveConversation) -> None:
        """Take in the turns other processes added to ``chat`` and let go of those they
        deleted."""
        if chat.closed or chat.id is None:
            return
        conversation = chat.conversation
        try:
            rows = await self.store.load_turns(chat.user, chat.id)
        except ConversationNotFound:
            rows = None
        except StoreError as exc:
            log.warning("reading conversation %s again failed: %s", chat.id, exc)
            return
        if rows is None:
            # Deleted elsewhere: shown emptied, as a delete here does; an answer this
            # process is giving in it stops (its words have nowhere to go).
            if not conversation.unfollow():  # another's answer: it heard the delete too
                conversation.stop("stopped: the conversation was deleted")
            await conversation.wait()
            if chat.id is not None:
                # Emptied before anything else is awaited, so no question can slip in
                # between; one asked while the recorder forgets is stored anew (a write
                # to the deleted conversation fails and is tried again after).
                conversation.forget()
                await chat.recorder.forget()
            return
        follower = chat.follower
        if follower is not None and any(
            row.id == follower.turn_id and row.state != "streaming" for row in rows
        ):
            # The followed answer has ended in the store: its follower takes that end in
            # first, or a turn added after it would be judged while this conversation
            # still looks busy, and shown stopped rather than followed.
            follower.poke()
            await conversation.wait()
        stored = {row.id for row in rows}
        changed = False
        for turn in list(conversation.turns):
            turn_id = chat.recorder.stored_id(turn)
            if turn_id is None or turn_id in stored:
                continue
            if chat.follower is not None and chat.follower.turn is turn:
                conversation.unfollow()
                await conversation.wait()
            elif turn.active:
                continue  # this process's own answer: it is not another's to delete
            chat.recorder.disown(turn)
            if turn in conversation.turns:
                conversation.turns.remove(turn)
                changed = True
        added = [
            row for row in rows
            if not chat.recorder.knows(row.id)
            and not (row.owner and row.owner == self.store.owner)
        ]
        for row in added:
            live = row is rows[-1] and self._others(row) and not conversation.answering
            turn = _turn_from_row(row, live=live)
            previous = conversation.turns[-1].model if conversation.turns else turn.model
            turn.model_changed = turn.model != previous
            conversation.turns.append(turn)
            chat.recorder.adopt(turn, row.id)
            if live:
                self._follow(chat, turn, row)
            else:
                chat.recorder.settle(turn)
            changed = True
        if changed:
            conversation.changed()

    def release(self, chat: LiveConversation) -> None:
        """A screen stops showing ``chat``."""
        chat.viewers = max(0, chat.viewers - 1)
        if chat.viewers:
            return
        if chat.conversation.following:
            # Another process owns the answer and goes on with it; this one lets go.
            chat.conversation.unfollow()
            task = asyncio.get_running_loop().create_task(self._drop(chat))
        elif chat.conversation.answering:
            if self.finish_on_disconnect:
                task = asyncio.get_running_loop().create_task(self._finish_unwatched(chat))
            else:
                chat.conversation.stop("stopped: the connection closed")
                task = asyncio.get_running_loop().create_task(self._drop(chat))
        else:
            task = asyncio.get_running_loop().create_task(self._drop(chat))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish_unwatched(self, chat: LiveConversation) -> None:
        await chat.conversation.wait()
        turn = chat.conversation.current
        if not chat.viewers and turn is not None and turn.state == "done" and chat.id:
            self._away[chat.user] = chat.id
        if not chat.viewers:
            await self._drop(chat)

    async def _drop(self, chat: LiveConversation) -> None:
        if chat.viewers or chat.closed:
            return
        chat.closed = True
        try:
            await chat.conversation.aclose()
            await chat.recorder.aclose()
            # Removed only once saved: shutdown must still find it if this is cancelled.
            if chat in self.chats:
                self.chats.remove(chat)
        finally:
            chat.dropped.set()

    # ----- the user's library ---------------------------------------------------------

    async def history(self, user: str, limit: int, offset: int = 0) -> list[ConversationRow]:
        """``user``'s stored conversations, most recently used first."""
        await self._flush(user)
        return await self.store.list_conversations(user, limit=limit, offset=offset)

    async def _flush(self, user: str) -> None:
        """Save ``user``'s chats now: unsaved progress would make lists and token counts
        read from the store lag behind the screen."""
        for chat in [c for c in self.chats if c.user == user]:
            await chat.recorder.flush()

    async def usage(self, user: str, *, holder: str | None = None) -> Usage:
        """The tokens of today (UTC) of ``holder`` (default: ``user``), by kind, every
        finished answer included, whichever of its names asked."""
        holder = holder or user
        for chat in self.chats:
            if chat.user == user or any(t.holder == holder for t in chat.conversation.turns):
                await chat.recorder.flush()
        return await self.store.token_counts(holder, day_start(self.quota.now()))

    async def title(self, user: str, conversation_id: int) -> ConversationRow:
        """One of ``user``'s conversations, for a confirmation question.

        Raises:
            ConversationNotFound: no such conversation of this user.
        """
        return await self.store.get_conversation(user, conversation_id)

    async def delete(self, user: str, conversation_id: int) -> bool:
        """Delete one of ``user``'s conversations.

        In memory it becomes an empty conversation (an answer still coming stops), so
        every screen showing it, on any connection, shows it emptied, and its next
        question starts a new stored conversation rather than writing to a deleted one.
        """
        live = [c for c in self.chats if c.user == user and c.id == conversation_id]
        for chat in live:
            chat.conversation.stop("stopped: the conversation was deleted")
            chat.conversation.unfollow()  # another process's: asked to stop, let go
            await chat.conversation.wait()
            await chat.recorder.flush()
        deleted = await self.store.delete_conversation(user, conversation_id)
        for chat in live:
            await chat.recorder.forget()
            chat.conversation.forget()
        return deleted

    async def render(self, chat: LiveConversation, fmt: str, now: datetime) -> bytes:
        """``chat`` as a document in ``fmt`` (one of :data:`._export.FORMATS`)."""
        await chat.recorder.flush()
        turns = list(chat.conversation.turns)
        # An e-book of a long conversation takes a while to build: off the event loop.
        return await asyncio.to_thread(_export.render, fmt, turns, chat.id, now)

    async def export(self, chat: LiveConversation, now: datetime, fmt: str = "md") -> Path:
        """Write ``chat`` in ``fmt`` (default Markdown) to the user's export folder;
        returns the file."""
        data = await self.render(chat, fmt, now)
        folder = self.export_dir / _safe_name(chat.user)
        path = _export_path(folder, chat, now, fmt)
        try:
            await asyncio.to_thread(_write_export, folder, path, data)
        except OSError as exc:
            log.error("export to %s failed: %s", folder, exc)
            raise StoreError(
                f"The export could not be written on the server ({exc.strerror or exc})."
            ) from exc
        return path

    async def search(
        self, user: str, words: str, limit: int, offset: int = 0
    ) -> list[SearchHit]:
        """``user``'s turns matching ``words``, newest first (see :meth:`Store.search`);
        answers still streaming are saved first, so what is on a screen is found.

        Raises:
            InputRejected: nothing searchable in ``words``.
        """
        await self._flush(user)
        return await self.store.search(user, words, limit=limit, offset=offset)

    # ----- shutdown -------------------------------------------------------------------

    def stop_answers(self) -> None:
        """The server is stopping: every answer in flight stops, marked interrupted.
        (First, before the sessions end: their leaving would stop answers with another
        note, or let them run on.)"""
        for chat in self.chats:
            if not chat.conversation.unfollow():  # another process's goes on there
                chat.conversation.stop(INTERRUPTED_NOTE)

    async def aclose(self) -> None:
        """Stop every answer (marked interrupted), save everything, close the store."""
        for chat in self.chats:
            chat.closed = True
            if not chat.conversation.unfollow():
                chat.conversation.stop(INTERRUPTED_NOTE)
        for chat in list(self.chats):
            await chat.conversation.aclose()
            await chat.recorder.aclose()
            chat.dropped.set()
        self.chats.clear()
        for task in list(self._closing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()


def _safe_name(name: str) -> str:
    """A folder name for a user: letters, digits, ``._-`` only, never empty or dotted,
    and never the same for two names (a changed name gets a hash of the original)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:64]
    if safe == name:
        return safe
    return f"{safe or '_'}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def _export_path(folder: Path, chat: LiveConversation, now: datetime, fmt: str) -> Path:
    number = chat.id if chat.id is not None else 0
    return folder / f"conversation-{number}-{now:%Y%m%d-%H%M%S}.{fmt}"


def _write_export(folder: Path, path: Path, data: bytes) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)


def to_markdown(chat: LiveConversation, now: datetime) -> str:
    """A conversation as a Markdown document (see :func:`._export.to_markdown`).

    Every text passes the sanitiser: a file on the server is read with ``cat`` in a
    terminal too, where a stored escape sequence would act.
    """
    return _export.to_markdown(chat.conversation.turns, now)
