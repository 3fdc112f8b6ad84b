"""A conversation as a document to take away: Markdown, plain text or an EPUB e-book.

Contract:
- :func:`render` gives the bytes of one format of :data:`FORMATS` (``md``, ``txt``,
  ``epub``) for a conversation's turns: each question, the model's thinking when it was
  shown, the answer, the model that wrote it, its web sources and its note (why it
  ended early).
- Every text passes the sanitiser first: a file on the server is read with ``cat`` in a
  terminal, and an e-book reader must not be handed control characters (XML forbids
  them).
- The EPUB is EPUB 3 made with ``ebooklib`` (no zip of our own): one chapter per
  question, answers' Markdown rendered to XHTML by ``markdown-it-py`` with raw HTML
  escaped, images shown as their text, and links kept only when they are absolute web
  or mail addresses (anything else would point inside the book at nothing); title, date
  and a table of contents in the metadata. It passes ``epubcheck``.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from collections.abc import Sequence
from datetime import datetime

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ._conversation import Turn, source_line
from ._recorder import TITLE_CHARS
from ._sanitize import sanitize, sanitize_inline

FORMATS = ("md", "txt", "epub")
MEDIA_TYPES = {"md": "text/markdown", "txt": "text/plain", "epub": "application/epub+zip"}
_LINK = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)
_CSS = (
    "blockquote.question { font-weight: bold; margin: 0 0 1em 0; }\n"
    "div.thoughts { font-style: italic; border-left: 2px solid; padding-left: 0.5em; }\n"
    "p.note { font-style: italic; }\n"
)


def title_of(turns: Sequence[Turn]) -> str:
    """The document's title: the first question, on one line."""
    if not turns:
        return "Empty conversation"
    return " ".join(sanitize(turns[0].question).split())[:TITLE_CHARS] or "Conversation"


def render(fmt: str, turns: Sequence[Turn], number: int | None, now: datetime) -> bytes:
    """The conversation ``number`` (its stored number; None: not stored yet) in ``fmt``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt == "md":
        return to_markdown(turns, now).encode("utf-8")
    if fmt == "txt":
        return to_text(turns, now).encode("utf-8")
    if fmt == "epub":
        return to_epub(turns, number, now)
    raise ValueError(f"not an export format: {fmt!r}")


def to_markdown(turns: Sequence[Turn], now: datetime) -> str:
    """Each question as a quote, its thinking (when shown) under a label, then its
    answer, sources and note in brackets."""
    head = f"# {title_of(turns)}\n\nExported {now:%Y-%m-%d %H:%M} UTC by kindlessh.\n"
    blocks = [head]
    for turn in turns:
        lines = ["> " + line for line in sanitize(turn.question).splitlines() or [""]]
        if turn.thoughts.strip():
            lines += ["", "*Thinking:*", ""]
            lines += ["> " + line for line in sanitize(turn.thoughts).strip().splitlines()]
        lines += ["", sanitize(turn.answer).rstrip()]
        if turn.model:
            lines += ["", f"*Answered by {sanitize_inline(turn.model, 80)}.*"]
        if turn.sources:
            lines += ["", "Sources:"]
            lines += [
                f"{i}. {source_line(s, links=True)}" for i, s in enumerate(turn.sources, 1)
            ]
        if turn.note:
            lines += ["", f"*[{sanitize(turn.note)}]*"]
        blocks.append("\n".join(lines) + "\n")
    return "\n---\n\n".join(blocks)


def to_text(turns: Sequence[Turn], now: datetime) -> str:
    """Plain text: the answers' Markdown as written, questions and thinking marked by
    their first column, turns numbered."""
    title = title_of(turns)
    blocks = [f"{title}\n{'=' * min(len(title), 60)}\nExported {now:%Y-%m-%d %H:%M} UTC "
              "by kindlessh.\n"]
    for i, turn in enumerate(turns, 1):
        lines = [f"[{i}] Question:"]
        lines += ["  " + line for line in sanitize(turn.question).splitlines() or [""]]
        if turn.thoughts.strip():
            lines += ["", "Thinking:"]
            lines += ["  | " + line for line in sanitize(turn.thoughts).strip().splitlines()]
        lines += ["", "Answer:", sanitize(turn.answer).rstrip()]
        if turn.model:
            lines += ["", f"(answered by {sanitize_inline(turn.model, 80)})"]
        if turn.sources:
            lines += ["", "Sources:"]
            lines += [
                f"{n}. {source_line(s, links=True)}" for n, s in enumerate(turn.sources, 1)
            ]
        if turn.note:
            lines += ["", f"[{sanitize(turn.note)}]"]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# ----- EPUB -----------------------------------------------------------------------------


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": True})
    md.enable(["table", "strikethrough"])
    # An image would be a remote resource the book does not carry: its text stays.
    md.disable("image")
    return md


_MD = _markdown()


def _drop_dead_links(tokens: list[Token]) -> None:
    """Remove links that are not absolute web or mail addresses (their text stays)."""
    for token in tokens:
        if token.type != "inline" or not token.children:
            continue
        kept: list[Token] = []
        dropped: list[bool] = []
        for child in token.children:
            if child.type == "link_open":
                dead = not _LINK.match(str(child.attrGet("href") or ""))
                dropped.append(dead)
                if dead:
                    continue
            elif child.type == "link_close" and dropped and dropped.pop():
                continue
            kept.append(child)
        token.children = kept


def markdown_xhtml(text: str) -> str:
    """Markdown as an XHTML fragment (raw HTML escaped, see the module contract)."""
    tokens = _MD.parse(sanitize(text))
    _drop_dead_links(tokens)
    return str(_MD.renderer.render(tokens, _MD.options, {}))


def _source_item(title: str, site: str, url: str) -> str:
    text = html.escape(sanitize_inline(title, 100) or sanitize_inline(site, 60) or url)
    extra = sanitize_inline(site, 60)
    if extra and extra.lower() not in text.lower():
        text += f" ({html.escape(extra)})"
    url = sanitize_inline(url, 300)
    if _LINK.match(url) and " " not in url:
        return f'<li><a href="{html.escape(url)}">{text}</a></li>'
    return f"<li>{text}</li>"


def _chapter_body(number: int, turn: Turn) -> str:
    question = html.escape(sanitize(turn.question).strip())
    parts = [
        f"<h1>{number}. {html.escape(sanitize_inline(turn.question, 60))}</h1>",
        '<blockquote class="question"><p>'
        + question.replace("\n", "<br/>")
        + "</p></blockquote>",
    ]
    if turn.thoughts.strip():
        parts.append('<div class="thoughts"><h2>Thinking</h2>'
                     f"{markdown_xhtml(turn.thoughts)}</div>")
    parts.append(markdown_xhtml(turn.answer))
    if turn.model:
        model = html.escape(sanitize_inline(turn.model, 80))
        parts.append(f'<p class="model"><em>Answered by {model}.</em></p>')
    if turn.sources:
        items = "".join(_source_item(s.title, s.site, s.url) for s in turn.sources)
        parts.append(f"<h2>Sources</h2><ol>{items}</ol>")
    if turn.note:
        parts.append(f'<p class="note">[{html.escape(sanitize(turn.note))}]</p>')
    return "\n".join(parts)


def to_epub(turns: Sequence[Turn], number: int | None, now: datetime) -> bytes:
    """An EPUB 3 e-book of the conversation (see the module contract)."""
    from ebooklib import epub  # Strategy: loaded only by the few who export an e-book

    title = title_of(turns)
    book = epub.EpubBook()
    seed = f"{number}:{now.isoformat()}:{title}".encode("utf-8", "surrogatepass")
    book.set_identifier(f"urn:kindlessh:{hashlib.sha256(seed).hexdigest()[:32]}")
    book.set_title(title)
    book.set_language("en")
    book.add_author("kindlessh")
    book.add_metadata("DC", "date", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    book.add_metadata("DC", "description", f"Conversation {number or ''} exported "
                      f"{now:%Y-%m-%d %H:%M} UTC by kindlessh.".replace("  ", " "))
    style = epub.EpubItem(
        uid="style", file_name="style.css", media_type="text/css", content=_CSS
    )
    book.add_item(style)
    chapters = []
    for i, turn in enumerate(turns or [Turn("")], 1):
        chapter = epub.EpubHtml(
            title=f"{i}. {sanitize_inline(turn.question, 60) or 'Question'}",
            file_name=f"turn-{i:04d}.xhtml",
            lang="en",
        )
        chapter.content = f"<html><body>{_chapter_body(i, turn)}</body></html>"
        chapter.add_item(style)
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    buffer = io.BytesIO()
    epub.write_epub(buffer, book)
    return buffer.getvalue()
