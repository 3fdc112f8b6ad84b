"""The store's rows and words, shared by its interface and both backends.

Contract:
- The values the store reads back (:class:`ConversationRow`, :class:`TurnRow`,
  :class:`SearchHit`, :class:`Options`), the notes it writes for cut-off answers, the
  snippet marks, and how what a reader typed becomes search terms. :mod:`._store`
  re-exports them all; import them from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ._provider import Source, Usage

StoredState = Literal["streaming", "done", "stopped", "failed"]
FinalState = Literal["done", "stopped", "failed"]

# The note of an answer the server's stop cut off: the hub's shutdown and the recovery
# of the next start both write it.
INTERRUPTED_NOTE = "interrupted: the server stopped"
# The note of an answer whose worker process died while other workers kept serving
# (PostgreSQL): another worker's start marks it.
DEAD_OWNER_NOTE = "interrupted: the server answering it stopped"


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """One conversation in a listing."""

    id: int
    title: str
    created_at: datetime
    updated_at: datetime
    turn_count: int
    model: str = ""  # the model of its last answer


@dataclass(frozen=True, slots=True)
class Options:
    """A conversation's own choices, stored with it; None is the server's default."""

    system_prompt: str | None = None
    web: bool | None = None
    model: str | None = None  # the model entry it answers with (``/model``)


@dataclass(frozen=True, slots=True)
class TurnRow:
    """One stored question and its answer (possibly partial)."""

    id: int
    conversation_id: int
    position: int
    question: str
    answer: str
    thoughts: str
    model: str
    state: StoredState
    note: str | None
    finish_reason: str | None
    usage: Usage | None  # None: no usage was reported
    started_at: datetime
    duration_ms: int | None
    incomplete: bool
    replay: str = ""  # the provider's record of the answer (see _provider.Replay)
    sources: tuple[Source, ...] = ()  # a grounded answer's web sources
    owner: str = ""  # the store (worker) that added it; "" when unknown


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One turn that matches a search: where it is and a snippet of the match.

    ``snippet`` is raw stored text with each match between :data:`MARK_START` and
    :data:`MARK_END` (control characters no stored text keeps past the sanitiser: the
    caller sanitises the pieces between them and marks the matches its own way)."""

    conversation_id: int
    position: int
    title: str
    started_at: datetime
    snippet: str


MARK_START, MARK_END = "\x02", "\x03"
SNIPPET_TOKENS = 12  # words around the match in a snippet


def search_terms(words: str) -> list[tuple[str, bool]]:
    """What a reader typed as search terms: ``(text, prefix)`` pairs, a passage in
    double quotes being one term (a phrase), a word ending in ``*`` a prefix. Each
    backend turns them into its own query (FTS5: :func:`search_query`)."""
    terms: list[tuple[str, bool]] = []
    for phrase, word in re.findall(r'"([^"]*)"?|(\S+)', words):
        if phrase.strip():
            terms.append((phrase.strip(), False))
            continue
        prefix = word.endswith("*")
        word = word.rstrip("*").replace('"', "")
        if word:
            terms.append((word, prefix))
    return terms


def search_query(words: str) -> str:
    """The FTS5 query for what a reader typed: each word a prefix-free term, quoted so
    FTS5 operators and punctuation are plain text; a word ending in ``*`` is a prefix;
    a passage in double quotes is a phrase. Empty when nothing searchable was typed."""
    return " ".join(
        '"' + text.replace('"', '""') + '"' + ("*" if prefix else "")
        for text, prefix in search_terms(words)
    )
