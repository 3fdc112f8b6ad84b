"""The provider protocol: one upstream model API seen as an async stream of domain events.

Contract:
- ``Provider.stream(request)`` yields :data:`StreamEvent` values in order: any number of
  :class:`TextDelta` / :class:`ThoughtDelta` / :class:`Usage`, then exactly one
  :class:`Finish` when the stream ended without an error, whatever its reason
  (a :class:`Replay` and :class:`Sources` may come just before it)
  (:attr:`Finish.normal` says whether the answer is whole). The provider words the
  reader's note about an early end itself (:attr:`Finish.note`): nothing here knows
  any one upstream's finish reasons.
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
    # For a model turn: the provider's own record of the answer (:class:`Replay`), sent
    # back instead of ``text`` when there is one.
    replay: str = ""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything one answer needs: the whole history, ending with the new question."""

    messages: tuple[Message, ...]
    system_instruction: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None
    include_thoughts: bool = False  # a screen shows thoughts: ask the upstream for them
    search: bool = False  # ground the answer in a web search, and list its sources


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
    """Token counts: of one answer (a running total while it streams, so the last one
    wins; never sum them), of a stored turn, or of a user's day.

    ``total_tokens`` is the upstream's own total when it gave one; left at 0 it becomes
    the sum of the three kinds. Budgets always count the three kinds
    (:attr:`counted`), which is what the store's ledger keeps.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    thoughts_tokens: int = 0
    total_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.total_tokens:
            object.__setattr__(self, "total_tokens", self.counted)

    @property
    def counted(self) -> int:
        """Input, output and thinking tokens together: what a budget counts."""
        return self.input_tokens + self.output_tokens + self.thoughts_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer ended.

    Attributes:
        reason: the upstream's own word for why (kept as received, e.g. for the store).
        normal: True when the answer ended as it should (not cut short or refused).
        note: one line for the reader saying why the answer ended early, worded by the
            provider; None for a normal end.
        blocked: True when the question itself was refused.
        message: the upstream's own explanation, if it gave one.
    """

    reason: str
    normal: bool = True
    note: str | None = None
    blocked: bool = False
    message: str = ""


@dataclass(frozen=True, slots=True)
class Replay:
    """What the provider needs sent back with this answer in later turns (opaque to
    everything else: kept with the turn, stored, and handed back as
    :attr:`Message.replay`)."""

    data: str


@dataclass(frozen=True, slots=True)
class Source:
    """One web source an answer was grounded in: its title, its site, and its address
    (which may be the upstream's redirect; never shown on a screen)."""

    title: str
    site: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class Sources:
    """The sources of a grounded answer, numbered in this order."""

    items: tuple[Source, ...]


StreamEvent = TextDelta | ThoughtDelta | Usage | Replay | Sources | Finish


class Provider(Protocol):
    """An upstream model API."""

    @property
    def name(self) -> str:
        """The API's name shown to the user in messages, such as "Gemini"."""
        ...

    @property
    def model(self) -> str:
        """The model id shown to the user (and stored with each turn)."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream one answer; see the module docstring for the contract."""
        ...
