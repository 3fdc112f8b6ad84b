"""Keeping one conversation saved in the store while it changes.

Contract:
- A :class:`Recorder` watches one :class:`Conversation` and mirrors its turns into the
  :class:`Store`: a new turn is added at once (the stored conversation is created with
  the first question as its title), a streaming answer is saved at most once per
  ``interval``, and a finished turn is written with its outcome and usage. A turn that
  leaves the conversation (``/retry`` replaces the last answer) is deleted.
- Writes happen in one background task, in order, never on the caller's path: the chat
  never waits for the disk. :meth:`flush` writes everything now (shutdown, tests).
- A store error is logged and retried on the next change; it never reaches the chat.
- A turn another process owns (:meth:`Recorder.adopt`: followed, or added there) is
  never written here: its owner writes it. Once followed to its end
  (:meth:`Recorder.settle`) it is a stored turn like a loaded one (``/retry`` here
  deletes it). A turn deleted elsewhere (:meth:`Recorder.disown`) leaves the
  conversation without a second delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ._conversation import Conversation, Turn
from ._errors import KindleSSHError
from ._store import Options, Store

log = logging.getLogger("kindlessh.recorder")

TITLE_CHARS = 80


def title_for(question: str) -> str:
    """A conversation's title: its first question on one line, cut to a list's width."""
    title = " ".join(question.split())
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1] + "…"


class Recorder:
    """Mirrors ``conversation`` into ``store`` for ``user``.

    Args:
        conversation_id: the stored conversation, when the turns came from the store;
            None creates one with the first question.
        saved: turns already stored and finished (loaded from the store), by turn.
    """

    def __init__(
        self,
        store: Store,
        conversation: Conversation,
        user: str,
        *,
        interval: float,
        conversation_id: int | None = None,
        saved: dict[Turn, int] | None = None,
    ) -> None:
        self.store = store
        self.conversation = conversation
        self.user = user
        self.interval = interval
        self.conversation_id = conversation_id
        self._ids: dict[Turn, int] = dict(saved or {})
        self._finished: set[Turn] = set(self._ids)
        self._progress: dict[Turn, tuple[int, int]] = {}
        self._foreign: set[Turn] = set()  # written by another process, never here
        self._added: set[int] = set()  # the ids of turns this recorder added
        # The conversation's own options as stored (loaded ones are stored already).
        self._options = _options(conversation) if conversation_id is not None else Options()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._unsubscribe = conversation.subscribe(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stored_id(self, turn: Turn) -> int | None:
        """The store's id of ``turn``, once it is saved."""
        return self._ids.get(turn)

    def knows(self, turn_id: int) -> bool:
        """True when stored turn ``turn_id`` is one of this conversation's here."""
        return turn_id in self._ids.values()

    def added(self, turn_id: int) -> bool:
        """True when this recorder wrote stored turn ``turn_id`` (asked here)."""
        return turn_id in self._added

    def adopt(self, turn: Turn, turn_id: int) -> None:
        """``turn`` is stored turn ``turn_id``, written by another process: never
        write it here."""
        self._ids[turn] = turn_id
        self._foreign.add(turn)

    def settle(self, turn: Turn) -> None:
        """An adopted turn is final in the store: from now on it is like a loaded one."""
        if turn in self._foreign and turn in self._ids:
            self._foreign.discard(turn)
            self._finished.add(turn)

    def disown(self, turn: Turn) -> None:
        """``turn``'s row was deleted elsewhere: when it leaves the conversation, forget
        it without deleting it again."""
        self._foreign.add(turn)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            saved = await self.flush()
            if not saved:
                # The store failed: try again after a while, change or no change.
                await asyncio.sleep(self.interval)
                self._wake.set()
            elif any(turn.active for turn in self.conversation.turns):
                # Strategy: progress is saved once per interval, not per delta; a
                # SIGKILL loses at most this much, and the disk is spared 40 writes/s.
                await asyncio.sleep(self.interval)

    async def flush(self) -> bool:
        """Write every change made so far; False if the store failed (it is logged).

        The writing itself is shielded: a caller cancelled half-way (a screen that
        closes during /history) never leaves a row whose id this recorder did not
        learn, which the next flush would write again.
        """
        return await asyncio.shield(asyncio.ensure_future(self._flush()))

    async def _flush(self) -> bool:
        async with self._lock:
            try:
                await self._sync()
            except KindleSSHError as exc:
                log.warning("saving the conversation failed: %s", exc)
                return False
            return True

    async def forget(self) -> None:
        """The stored conversation is gone (deleted): from now on this conversation is
        a new one, stored from its next question on."""
        async with self._lock:
            self.conversation_id = None
            self._ids.clear()
            self._added.clear()
            self._foreign.clear()
            self._finished.clear()
            self._progress.clear()
            self._options = Options()

    async def _sync(self) -> None:
        turns = list(self.conversation.turns)
        for turn in [t for t in self._ids if t not in turns]:
            if turn not in self._foreign:
                await self.store.delete_turn(self._ids[turn])
            # Forgotten only once deleted: a failed delete is tried again.
            self._added.discard(self._ids.pop(turn))
            self._finished.discard(turn)
            self._foreign.discard(turn)
            self._progress.pop(turn, None)
        for turn in turns:
            if turn not in self._ids:
                if self.conversation_id is None:
                    self.conversation_id = await self.store.new_conversation(
                        self.user, title_for(turn.question)
                    )
                self._ids[turn] = await self.store.add_turn(
                    self.conversation_id,
                    turn.question,
                    turn.model or self.conversation.provider.model,
                )
                self._added.add(self._ids[turn])
            turn_id = self._ids[turn]
            if turn in self._finished or turn in self._foreign:
                continue
            if turn.active:
                size = (len(turn.answer), len(turn.thoughts))
                if size != self._progress.get(turn, (0, 0)):
                    await self.store.save_progress(turn_id, turn.answer, turn.thoughts)
                    self._progress[turn] = size
                continue
            state = turn.state
            assert state in ("done", "stopped", "failed")
            await self.store.finish_turn(
                turn_id,
                answer=turn.answer,
                thoughts=turn.thoughts,
                state=state,
                incomplete=turn.incomplete,
                note=turn.note,
                finish_reason=turn.finish_reason or None,
                usage=turn.usage,
                holder=turn.holder,
                duration_ms=round(turn.duration * 1000),
                replay=turn.replay,
                sources=turn.sources,
            )
            self._finished.add(turn)
        await self._sync_options()

    async def _sync_options(self) -> None:
        """Store the conversation's own choices (system prompt, web search, model entry)
        when they changed (once it is stored: a new conversation is stored with its first
        question)."""
        options = _options(self.conversation)
        if self.conversation_id is None or options == self._options:
            return
        await self.store.set_conversation_options(self.conversation_id, options)
        self._options = options

    async def aclose(self) -> None:
        """Write what is left and stop watching."""
        with contextlib.suppress(ValueError):  # the conversation may have let go first
            self._unsubscribe()
        async with self._lock:
            # Never cancel a write half-way: the store would keep a row whose id this
            # recorder never learnt, and the next flush would write the turn twice.
            self._task.cancel()
        await asyncio.wait({self._task})
        await self.flush()


def _options(conversation: Conversation) -> Options:
    """The choices a conversation keeps with it."""
    return Options(conversation.system_prompt, conversation.web, conversation.entry or None)
