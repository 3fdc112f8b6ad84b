"""Following an answer that another process owns, through the shared store.

Contract:
- With a shared store (PostgreSQL), one process owns each answer in flight: the one
  that asked upstream, whose recorder writes the turn. Any other process showing that
  turn *follows* it: a :class:`Follower` keeps one in-memory :class:`Turn` in step with
  its stored row and never writes the row itself.
- :meth:`Follower.poke` says the row changed (the hub calls it for each notification
  about the turn). The follower then re-reads the row (:meth:`Store.get_turn`) and
  applies it: a longer answer or thoughts while it streams (the screen paces and
  commits the growth as it does a local answer's deltas), then the final state, note,
  usage, finish reason, cut, sources and duration when the owner finishes it.
- A follower that has heard nothing for ``check`` seconds (``[storage]
  follow_check_ms``) reads the row anyway and asks the store which owners are alive
  (:meth:`Store.live_owners`). When the owner is gone it has the store mark its answers
  interrupted (:meth:`Store.recover_interrupted`) and shows the turn so, with what
  arrived: never "streaming" for ever. Its first look, at once, does the same.
- A store failure is logged and tried again after ``check`` seconds; it never ends the
  follow. The follow ends when the row is final or gone (the turn is then stopped).
- Nothing here does I/O beyond the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from ._conversation import Turn
from ._errors import ConversationNotFound, KindleSSHError
from ._store import TurnRow

log = logging.getLogger("kindlessh.follow")

# The note of a followed turn whose stored row went away (its conversation deleted).
GONE_NOTE = "stopped: the answer was removed elsewhere"


def apply_row(turn: Turn, row: TurnRow) -> None:
    """Bring ``turn`` in step with its stored ``row`` (text while it streams; the whole
    outcome once it is final)."""
    turn.answer = row.answer
    turn.thoughts = row.thoughts
    if row.model:
        turn.model = row.model
    if row.state == "streaming":
        if row.answer:
            turn.state = "streaming"
        return
    turn.state = row.state
    turn.note = row.note
    turn.finish_reason = row.finish_reason or ""
    # Stored as the outcome: an answer that ended early stays marked so.
    turn.cut = row.incomplete
    turn.usage = row.usage
    turn.replay = row.replay
    turn.sources = row.sources
    turn.duration = (row.duration_ms or 0) / 1000
    turn.status = None


class SharedStore(Protocol):
    """What a follower needs of a store several processes share (PostgreSQL)."""

    async def get_turn(self, user: str, turn_id: int) -> TurnRow: ...

    async def live_owners(self) -> set[str]: ...

    async def recover_interrupted(self) -> int: ...

    async def ask_stop(self, user: str, turn_id: int) -> None: ...

    async def listen_stops(self, callback: Callable[[str, int], None]) -> None: ...


class Follower:
    """Keeps ``turn`` in step with stored turn ``turn_id`` of ``user``, owned by
    ``owner`` (see the module contract); ``changed`` is called after every change."""

    def __init__(
        self,
        store: SharedStore,
        user: str,
        turn_id: int,
        owner: str,
        turn: Turn,
        changed: Callable[[], None],
        *,
        check: float,
    ) -> None:
        self.store = store
        self.user = user
        self.turn_id = turn_id
        self.owner = owner
        self.turn = turn
        self.changed = changed
        self.check = check
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """The stored row changed: read it again."""
        self._wake.set()

    async def run(self) -> None:
        """Follow until the row is final or gone."""
        heard = False  # the first look also asks whether the owner lives
        while True:
            failed = False
            row: TurnRow | None = None
            try:
                if not heard and not await self._owner_alive():
                    await self.store.recover_interrupted()
                row = await self._read()
            except KindleSSHError as exc:
                log.warning("following answer %d failed: %s", self.turn_id, exc)
                failed = True  # unchanged; look again after a while
            if row is None and not failed:
                self.turn.state = "stopped"
                self.turn.note = GONE_NOTE
                self.changed()
                return
            if row is not None:
                before = (len(self.turn.answer), len(self.turn.thoughts), self.turn.state)
                apply_row(self.turn, row)
                after = (len(self.turn.answer), len(self.turn.thoughts), self.turn.state)
                if row.state != "streaming":
                    self.changed()
                    return
                if after != before:
                    self.changed()
            try:
                await asyncio.wait_for(self._wake.wait(), self.check)
                heard = True
            except TimeoutError:
                heard = False
            self._wake.clear()

    async def _owner_alive(self) -> bool:
        return bool(self.owner) and self.owner in await self.store.live_owners()

    async def _read(self) -> TurnRow | None:
        try:
            return await self.store.get_turn(self.user, self.turn_id)
        except ConversationNotFound:
            return None
