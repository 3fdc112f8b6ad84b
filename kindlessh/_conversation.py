"""A conversation: its turns, the history sent upstream, and the one answer in flight.

Contract:
- One :class:`Conversation` may be shown on several screens at once (the hub shares it
  between a user's connections) and is saved by one recorder; all of them subscribe.
- :meth:`Conversation.ask` starts one answer in a background task and returns its
  :class:`Turn` at once; a second ``ask`` while one streams, from any screen, raises
  InputRejected.
- Every change (a new delta, a finish, an error) calls each
  subscriber; subscribers must be cheap (the UI throttles its repaints itself).
- Nothing here knows the upstream: messages name it by :attr:`Provider.name`, and the
  note after an early end is the one the provider wrote (:attr:`Finish.note`).
- Nothing is ever lost: a stopped or failed answer keeps the text that arrived and says
  why in ``Turn.note``; a failure never raises out of the conversation.
- Each request carries the history of earlier turns that produced text (roles
  ``user``/``model``, with the provider's :class:`Replay` of each answer when it sent
  one), then the new question; the conversation's own system prompt and web search
  choice (:meth:`Conversation.configure`, stored with it) or the server's defaults;
  and whether thoughts are wanted (the screen that asks shows them). When they were
  wanted and the model thought but sent none, one note says so, once per conversation.
- :meth:`aclose` cancels any answer and waits for it, closing the upstream response.
- :meth:`follow` shows a turn another process answers (:mod:`._follow`) as this
  conversation's answer in flight: ``answering``, ``wait`` and subscribers work as for
  its own; :meth:`stop` asks that process to stop it (the person's Ctrl-C), and
  :meth:`unfollow` only stops following it here (a screen leaving, a shutdown).
- An answer, and its thoughts, are kept to ``max_answer_chars`` characters each
  (``[chat] max_answer_chars``): past it the text is cut there, the turn ends marked
  ``truncated`` (incomplete), and the upstream response is closed, so an upstream that
  never stops costs bounded memory.
- With a :class:`UserQuota` (the conversation's, or the one :meth:`ask` is given: the
  asker's, when screens of different holders share the conversation), a question must
  also be admitted by it (a refusal raises as it does), records its holder in
  ``Turn.holder`` (whose token ledger it counts in), waits for a shared upstream slot
  (the turn's ``status`` says how many are ahead), and gives its usage back to the quota
  when its answer ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from ._config import ChatConfig
from ._errors import InputRejected, KindleSSHError, RateLimited, UpstreamError
from ._provider import (
    ChatRequest,
    Finish,
    Message,
    Provider,
    Replay,
    Source,
    Sources,
    TextDelta,
    ThoughtDelta,
    Usage,
)
from ._quota import Ticket, UserQuota
from ._retry import RetryPolicy, stream_with_retries
from ._sanitize import sanitize_inline

log = logging.getLogger("kindlessh.conversation")

TurnState = Literal["waiting", "streaming", "done", "stopped", "failed"]
_ids = itertools.count(1)


@dataclass(eq=False)
class Turn:
    """One question and its answer (possibly partial).

    ``finish_reason`` is the upstream's word, kept as received; ``cut`` says the
    upstream ended the answer early (length limit, filter...), whatever its word.
    ``upstream`` is the provider's name, for "waiting for ..." lines.
    """

    question: str
    answer: str = ""
    thoughts: str = ""
    state: TurnState = "waiting"
    note: str | None = None
    status: str | None = None  # a passing state, e.g. waiting to retry
    finish_reason: str = ""
    cut: bool = False
    upstream: str = "the model"
    model: str = ""  # the model that wrote the answer (stored with the turn)
    model_changed: bool = False  # its model differs from the turn before's: say which
    usage: Usage | None = None
    holder: str | None = None  # whose limits the question spent (._holders)
    replay: str = ""  # the provider's record of the answer, sent back in later turns
    sources: tuple[Source, ...] = ()  # what a grounded answer was based on
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def active(self) -> bool:
        """True while the answer may still grow."""
        return self.state in ("waiting", "streaming")

    @property
    def incomplete(self) -> bool:
        """True when the answer did not end normally."""
        return self.state in ("stopped", "failed") or self.cut


def source_line(source: Source, *, links: bool = False) -> str:
    """One source on one line, compact for e-ink: its title and, when it says more, its
    site in brackets; ``links`` adds the address (for an export, never a screen)."""
    title = sanitize_inline(source.title, 100)
    site = sanitize_inline(source.site, 60)
    line = title if not site or site.lower() in title.lower() else f"{title} ({site})"
    if links and source.url:
        line += f" <{sanitize_inline(source.url, 300)}>"
    return line


@dataclass(frozen=True)
class GenerationSettings:
    """What every request of a conversation carries besides the history."""

    system_instruction: str = ""
    search: bool = False  # ground answers in a web search unless a conversation says not
    temperature: float | None = None
    max_output_tokens: int | None = None
    max_prompt_chars: int = ChatConfig.max_prompt_chars
    max_answer_chars: int = ChatConfig.max_answer_chars


def _capped(text: str, more: str, cap: int) -> tuple[str, bool]:
    """``text + more`` kept to ``cap`` characters; True when it went past the cap."""
    if len(text) + len(more) <= cap:
        return text + more, False
    return (text + more)[:cap], True


class Conversation:
    """One conversation's turns and its answer in flight, shared by every screen that
    shows it (see the module contract)."""

    def __init__(
        self,
        provider: Provider,
        settings: GenerationSettings,
        retry: RetryPolicy | None = None,
        quota: UserQuota | None = None,
        entry: str = "",
    ) -> None:
        self.provider = provider
        self.entry = entry  # the model entry's name (/model), "" when not configured
        self.settings = settings
        self.retry_policy = retry or RetryPolicy()
        self.quota = quota
        self.turns: list[Turn] = []
        self._subscribers: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop_note = ""
        self._told_no_thoughts = False
        # Set while the answer in flight is another process's (follow): asks it to stop.
        self._ask_stop: Callable[[str], None] | None = None
        # This conversation's own choices (stored with it); None: the server's default.
        self.system_prompt: str | None = None
        self.web: bool | None = None

    def use(self, entry: str, provider: Provider) -> None:
        """Answer with ``provider`` (model entry ``entry``) from the next question on;
        the turns so far go with it as history, whoever wrote them."""
        self.entry = entry
        self.provider = provider
        self._told_no_thoughts = False
        self._changed()

    @property
    def instructions(self) -> str:
        """The system prompt its questions carry ("" for none)."""
        if self.system_prompt is None:
            return self.settings.system_instruction
        return self.system_prompt

    @property
    def searching(self) -> bool:
        """True when its answers are grounded in a web search."""
        return self.settings.search if self.web is None else self.web

    def configure(self, *, system_prompt: str | None = None, web: bool | None = None,
                  default_prompt: bool = False) -> None:
        """Change this conversation's system prompt (``default_prompt``: back to the
        server's) or web search; from its next question on."""
        if default_prompt:
            self.system_prompt = None
        elif system_prompt is not None:
            self.system_prompt = system_prompt
        if web is not None:
            self.web = web
        self._changed()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):  # already gone: aclose() let go of all
                self._subscribers.remove(callback)

        return unsubscribe

    def changed(self) -> None:
        """Tell every subscriber the turns changed (a follower or the hub changed them
        from the store)."""
        self._changed()

    def _changed(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # a broken viewer must not break the answer
                log.exception("conversation subscriber failed")

    @property
    def answering(self) -> bool:
        """True while an answer is being generated."""
        return self._task is not None and not self._task.done()

    @property
    def following(self) -> bool:
        """True while the answer in flight is another process's, followed here."""
        return self.answering and self._ask_stop is not None

    def follow(
        self,
        turn: Turn,
        run: Coroutine[Any, Any, None],
        ask_stop: Callable[[str], None],
    ) -> None:
        """Show ``turn`` (the last turn, owned by another process) as the answer in
        flight while ``run`` keeps it in step; ``ask_stop(why)`` asks its owner to stop
        it. Nothing may be answering here."""
        assert not self.answering and self.turns and self.turns[-1] is turn
        self._ask_stop = ask_stop
        self._stop_note = ""
        self._task = asyncio.get_running_loop().create_task(run)
        self._task.add_done_callback(lambda _: self._settle(turn, None))
        self._changed()

    def unfollow(self) -> bool:
        """Stop following the other process's answer here (it goes on there). Returns
        False if none was followed."""
        if not self.following:
            return False
        assert self._task is not None
        self._stop_note = "stopped following: this screen's server let go of it"
        self._task.cancel()
        return True

    @property
    def current(self) -> Turn | None:
        """The last turn, if any."""
        return self.turns[-1] if self.turns else None

    def ask(
        self, question: str, *, quota: UserQuota | None = None, thoughts: bool = False
    ) -> Turn:
        """Start answering ``question``, within ``quota`` (the limits of whoever asks;
        default: the conversation's own); ``thoughts``: the screen shows thoughts, so the
        upstream is asked for them.

        Raises:
            InputRejected: the question is empty or too long, or an answer is in flight.
            BudgetExceeded: the user's prompts or tokens are spent for now (quota).
        """
        question = question.strip()
        limit = self.settings.max_prompt_chars
        if not question:
            raise InputRejected("Type a question first.")
        if len(question) > limit:
            raise InputRejected(
                f"That message has {len(question):,} characters; the limit is {limit:,}. "
                "Nothing was sent."
            )
        if self.answering:
            raise InputRejected("An answer is still coming; wait for it or press Ctrl-C.")
        quota = quota or self.quota
        ticket = quota.admit() if quota is not None else None
        self._stop_note = ""
        history: list[Message] = []
        for turn in self.turns:
            if turn.answer:
                history.append(Message("user", turn.question))
                history.append(Message("model", turn.answer, replay=turn.replay))
        history.append(Message("user", question))
        model = self.provider.model
        previous = self.turns[-1].model if self.turns else model
        turn = Turn(
            question, upstream=self.provider.name,
            holder=quota.holder if quota is not None else None,
            model=model, model_changed=bool(previous) and previous != model,
        )
        self.turns.append(turn)
        request = ChatRequest(
            messages=tuple(history),
            system_instruction=self.instructions,
            search=self.searching,
            temperature=self.settings.temperature,
            max_output_tokens=self.settings.max_output_tokens,
            include_thoughts=thoughts,
        )
        self._ask_stop = None
        self._task = asyncio.get_running_loop().create_task(self._run(turn, request, ticket))
        self._task.add_done_callback(lambda _: self._settle(turn, ticket))
        self._changed()
        return turn

    def _waiting(self, turn: Turn) -> Callable[[float, UpstreamError], None]:
        def on_wait(seconds: float, error: UpstreamError) -> None:
            name = self.provider.name
            busy = f"{name} is busy"
            if isinstance(error, RateLimited):
                busy = error.waiting or f"{name}'s quota is used up for now"
            turn.status = f"{busy}, retrying in {max(1, round(seconds))} s"
            self._changed()

        return on_wait

    def _queued(self, turn: Turn) -> Callable[[int], None]:
        def on_wait(ahead: int) -> None:
            where = f"{ahead} ahead" if ahead else "next in line"
            turn.status = f"Waiting for a free slot ({where})"
            self._changed()

        return on_wait

    async def _run(self, turn: Turn, request: ChatRequest, ticket: Ticket | None) -> None:
        finish_message = ""
        cap = self.settings.max_answer_chars
        truncated = ""
        stream = stream_with_retries(
            self.provider, request, self.retry_policy, on_wait=self._waiting(turn)
        )
        slot: contextlib.AbstractAsyncContextManager[None] = (
            ticket.slot(self._queued(turn), self.provider.name)
            if ticket is not None
            else contextlib.nullcontext()
        )
        try:
            async with slot, contextlib.aclosing(stream) as events:
                if turn.status is not None:  # it waited for the slot
                    turn.status = None
                    self._changed()
                async for event in events:
                    turn.status = None
                    if isinstance(event, TextDelta):
                        turn.state = "streaming"
                        turn.answer, full = _capped(turn.answer, event.text, cap)
                        if full:
                            truncated = "answer"
                            break  # leaving the block closes the upstream response
                    elif isinstance(event, ThoughtDelta):
                        turn.thoughts, full = _capped(turn.thoughts, event.text, cap)
                        if full:
                            truncated = "thoughts"
                            break
                    elif isinstance(event, Usage):
                        turn.usage = event
                        continue
                    elif isinstance(event, Replay):
                        turn.replay = event.data
                        continue
                    elif isinstance(event, Sources):
                        turn.sources = event.items
                    elif isinstance(event, Finish):
                        turn.finish_reason = event.reason
                        turn.cut = not event.normal
                        turn.note = event.note
                        finish_message = event.message
                    self._changed()
            turn.state = "done"
            if truncated:
                turn.cut = True
                turn.note = (
                    f"truncated: the {truncated} reached {cap:,} characters, the most "
                    "kept; the rest was not fetched"
                )
            self._check_thoughts(turn, request)
            if not turn.answer and turn.note is None:
                why = f" ({finish_message.rstrip('.')})" if finish_message else ""
                turn.note = f"{self.provider.name} sent no text{why}; try asking differently"
        except asyncio.CancelledError:
            turn.state = "stopped"
            why = self._stop_note or "stopped"
            turn.note = f"{why}; the text above is what arrived" if turn.answer else why
            raise
        except KindleSSHError as exc:
            self._fail(turn, str(exc))
        except Exception:
            log.exception("answer failed unexpectedly")
            self._fail(turn, "Something went wrong on the server; see its log.")
        finally:
            turn.status = None
            turn.duration = time.monotonic() - turn.started
            if ticket is not None:
                # Before the last change: a screen that sees the answer end may ask again.
                ticket.finish(turn.usage)
            self._changed()

    def _check_thoughts(self, turn: Turn, request: ChatRequest) -> None:
        """Thoughts were asked for and the model thought, but sent none: say so, once
        per conversation (some models never share them)."""
        thought = turn.usage is not None and turn.usage.thoughts_tokens > 0
        if not request.include_thoughts or turn.thoughts or not thought:
            return
        if self._told_no_thoughts or turn.note is not None:
            return
        self._told_no_thoughts = True
        turn.note = (
            f"{self.provider.model} thought but shared no thoughts; "
            "/thoughts has nothing to show for this model"
        )

    def _settle(self, turn: Turn, ticket: Ticket | None) -> None:
        """A task cancelled before it first ran never entered _run: end its turn here."""
        if ticket is not None:
            ticket.finish(turn.usage)
        if turn.active:
            turn.state = "stopped"
            turn.note = self._stop_note or "stopped"
            self._changed()

    @staticmethod
    def _fail(turn: Turn, message: str) -> None:
        turn.state = "failed"
        turn.note = f"interrupted: {message}" if turn.answer else message

    def retry(self, *, quota: UserQuota | None = None, thoughts: bool = False) -> Turn:
        """Ask the last question again, replacing its answer (``quota`` and ``thoughts`` as
        for
        :meth:`ask`).

        Raises:
            InputRejected: an answer is in flight, or there is nothing to retry.
        """
        if self.answering:
            raise InputRejected("An answer is still coming; wait for it or press Ctrl-C.")
        if not self.turns:
            raise InputRejected("Nothing to retry yet: ask a question first.")
        last = self.turns.pop()
        try:
            return self.ask(last.question, quota=quota, thoughts=thoughts)
        except BaseException:
            # Refused (too soon, budget spent...): the old answer stays, unchanged.
            self.turns.append(last)
            raise

    def forget(self) -> None:
        """Drop every turn: their stored conversation was deleted. Call it only when no
        answer is in flight; the screens showing this conversation follow."""
        self.turns = []
        self._changed()

    def stop(self, why: str = "") -> bool:
        """Stop the answer in flight, keeping what arrived. Returns False if none was.

        ``why`` becomes the turn's note (default "stopped")."""
        if not self.answering:
            return False
        assert self._task is not None
        if self._ask_stop is not None:
            # Another process answers: it stops the answer and writes it; this one
            # follows it to its end.
            self._ask_stop(why)
            return True
        if self._task.cancelling():
            # Already stopping: a second cancel would interrupt the upstream response's
            # own close, leaving its connection open.
            return True
        self._stop_note = why
        self._task.cancel()
        return True

    async def wait(self) -> None:
        """Wait until no answer is in flight."""
        task = self._task
        if task is not None and not task.done():
            # asyncio.wait, not await: the answer's own end (stopped, failed) is not the
            # caller's error, and the caller being cancelled must still cancel it.
            await asyncio.wait({task})

    async def aclose(self) -> None:
        """Stop any answer and wait until the upstream response is closed."""
        if not self.unfollow():
            self.stop()
        await self.wait()
        self._subscribers.clear()
