"""The provider protocol: one upstream model API seen as an async stream of domain events.

Contract:
- ``Provider.stream(request)`` yields :data:`StreamEvent` values in order: any number of
  :class:`TextDelta` / :class:`ThoughtDelta` / :class:`Usage`, then exactly one
  :class:`Finish` when the answer ended normally (whatever its reason).
- Every failure is raised as a :class:`~kindlessh._errors.UpstreamError` subclass whose
  message is meant for the reader; nothing else escapes (except cancellation).
- Closing the iterator (``aclose()``, or cancelling the task that iterates it) closes the
  upstream response at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "model"]


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of history as sent upstream."""

    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything one answer needs: the whole history, ending with the new question."""

    messages: tuple[Message, ...]
    system_instruction: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer text, to be appended."""

    text: str


@dataclass(frozen=True, slots=True)
class ThoughtDelta:
    """A piece of a thinking model's thought summary; never part of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts so far; a running total, so the last one wins (never sum them)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thought_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer ended. ``reason`` is the upstream's word (``STOP``, ``MAX_TOKENS``,
    ``SAFETY``...); ``blocked`` is True when the question itself was refused."""

    reason: str
    blocked: bool = False
    message: str = ""


StreamEvent = TextDelta | ThoughtDelta | Usage | Finish


class Provider(Protocol):
    """An upstream model API."""

    @property
    def model(self) -> str:
        """The model name shown to the user."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream one answer; see the module docstring for the contract."""
        ...


# What a finish reason means to a reader; STOP needs no note.
_FINISH_NOTES = {
    "MAX_TOKENS": "answer cut at the length limit",
    "SAFETY": "answer stopped by Gemini's safety filter",
    "RECITATION": "answer stopped: it was reciting a source too closely",
    "PROHIBITED_CONTENT": "answer stopped: prohibited content",
    "BLOCKLIST": "answer stopped: a blocked term came up",
    "SPII": "answer stopped: it contained sensitive personal information",
    "LANGUAGE": "answer stopped: unsupported language",
    "MALFORMED_FUNCTION_CALL": "answer stopped: the model produced a broken tool call",
    "UNEXPECTED_TOOL_CALL": "answer stopped: the model tried to call a tool",
    "TOO_MANY_TOOL_CALLS": "answer stopped: too many tool calls",
}


def finish_note(finish: Finish) -> str | None:
    """The one-line note to show after an answer, or None for a normal end."""
    if finish.blocked:
        why = finish.reason.replace("_", " ").lower()
        return f"question blocked by Gemini ({why}); rephrase it and try again"
    if finish.reason in ("STOP", ""):
        return None
    note = _FINISH_NOTES.get(finish.reason)
    if note is None:
        note = f"answer ended early ({finish.reason.replace('_', ' ').lower()})"
    return note
