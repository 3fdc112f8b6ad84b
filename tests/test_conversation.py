"""The conversation below the screen, with a provider that is not Gemini: the core names
the provider it is given, shows the notes that provider wrote, and reads a normal end from
the finish event, never from one upstream's words."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from kindlessh import (
    ChatRequest,
    Finish,
    RateLimited,
    StreamEvent,
    TextDelta,
    UpstreamError,
    Usage,
)
from kindlessh._conversation import Conversation, GenerationSettings
from kindlessh._retry import RetryPolicy


class OtherProvider:
    """A provider with its own name and its own finish words; each script is played by
    one call to stream(): its events, then its error if any."""

    name = "Elsewhere"
    model = "elsewhere-1"

    def __init__(self, *scripts: tuple[list[StreamEvent], UpstreamError | None]) -> None:
        self.scripts = list(scripts)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        events, error = self.scripts.pop(0)
        for event in events:
            yield event
        if error is not None:
            raise error


def conversation(provider: OtherProvider, retry: RetryPolicy | None = None) -> Conversation:
    return Conversation(provider, GenerationSettings(), retry)


async def answer(chat: Conversation, question: str = "hi?") -> None:
    chat.ask(question)
    await chat.wait()


async def test_a_normal_end_in_the_providers_own_words_is_complete() -> None:
    usage = Usage(input_tokens=3, output_tokens=4)
    chat = conversation(OtherProvider(([TextDelta("Fine."), usage, Finish("DONE")], None)))
    await answer(chat)
    [turn] = chat.turns
    assert (turn.answer, turn.state, turn.note) == ("Fine.", "done", None)
    assert turn.finish_reason == "DONE"  # kept as received
    assert not turn.incomplete
    assert turn.usage == usage


async def test_an_early_end_shows_the_providers_note_and_is_incomplete() -> None:
    cut = Finish("LENGTH", normal=False, note="cut short by the elsewhere limit")
    chat = conversation(OtherProvider(([TextDelta("Half"), cut], None)))
    await answer(chat)
    [turn] = chat.turns
    assert (turn.answer, turn.state) == ("Half", "done")
    assert turn.note == "cut short by the elsewhere limit"
    assert turn.finish_reason == "LENGTH"
    assert turn.incomplete


async def test_messages_name_the_provider() -> None:
    provider = OtherProvider(
        ([], RateLimited("per-minute quota", retry_after=0.01)),
        ([Finish("DONE", message="Nothing to say.")], None),
    )
    chat = conversation(provider, RetryPolicy(budget=5.0))
    statuses: list[str] = []
    chat.subscribe(lambda: statuses.append(chat.turns[-1].status or ""))
    turn = chat.ask("hi?")
    assert turn.upstream == "Elsewhere"  # the screen's "(waiting for Elsewhere)"
    await chat.wait()
    assert "Elsewhere's quota is used up for now, retrying in 1 s" in statuses
    assert turn.note == "Elsewhere sent no text (Nothing to say); try asking differently"
    assert "Gemini" not in " ".join(statuses) + (turn.note or "")


async def test_a_conversation_is_shared_by_every_subscriber() -> None:
    """Two screens and a recorder watch one conversation: each sees every change."""
    chat = conversation(OtherProvider(([TextDelta("a"), TextDelta("b"), Finish("DONE")], None)))
    left: list[str] = []
    right: list[str] = []
    chat.subscribe(lambda: left.append(chat.turns[-1].answer))
    chat.subscribe(lambda: right.append(chat.turns[-1].answer))
    await answer(chat)
    assert left == right
    assert left[-1] == "ab" and "a" in left


def test_usage_total_is_the_upstreams_or_else_the_sum() -> None:
    assert Usage(1, 2, 3).total_tokens == 6
    reported = Usage(1, 2, 3, total_tokens=10)
    assert reported.total_tokens == 10
    assert reported.counted == 6  # budgets count the three kinds, as the ledger does
