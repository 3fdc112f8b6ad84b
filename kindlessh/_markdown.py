"""Markdown answers as styled, pre-wrapped screen lines.

Contract of :func:`render_markdown`:

- Input: Markdown that has already been through :func:`~kindlessh._sanitize.sanitize`
  (no control character but ``\\n``). It may be any prefix of an answer that is still
  streaming in: an unclosed code fence, a half ``**bold``, a half table row. Such text
  renders as what it is so far (an unclosed fence is a code block to the end, an
  unclosed ``**`` shows literally) and never raises.
- Output: one entry per screen line, each a list of prompt-toolkit ``(style, text)``
  fragments. A style is ``""`` or built only from ``bold``, ``underline``, ``reverse``
  and, when ``color=True``, one foreground ``fg:ansi...`` (the sixteen ANSI colours,
  which any 256-colour terminal shows; never ``#rrggbb``, never a background).
- Guarantees, whatever rich does: no fragment text holds a control character (no ESC,
  ``\\n``, ``\\r``, tab), and the cells of a line, measured with prompt-toolkit's
  ``get_cwidth`` (the measure of the screen), never exceed ``width``. Lines carry no
  trailing spaces, and the output has no leading or trailing empty line.
- Words are never broken across lines unless a word is longer than the line.

Style choices (the same shapes in both modes; colour only adds a foreground):

- headings: bold, left-aligned, levels 1 and 2 also underlined (rich centres level 1).
- ``**strong**``: bold. ``*emphasis*``: underline, since kterm has no italic.
- ``inline code``: reverse in 1-bit mode (the attribute nothing else uses), magenta in
  colour mode.
- links: underlined text followed by `` (url)`` as plain text, unless the text is the
  URL. Never an OSC 8 hyperlink, which old terminals print as garbage.
- code blocks: indented two cells, no background. Syntax colours in colour mode only
  (1-bit mode shows code plain). A line is wrapped only when longer than the screen,
  and its continuation hangs deeper than the line's own indentation.
- block quotes: a ``│`` bar. Lists: `` • `` and `` 1. `` markers, hanging indent.
- tables: rich's table when every word of every cell fits; otherwise one record per
  row (``Header: value`` lines), so that no word is cut.
- a single line break is kept, as chat apps do (not folded into the paragraph).
- ``~~strike~~`` and raw HTML stay literal (neither is parsed): kterm cannot strike,
  and rich would drop HTML blocks, text and all.
- dim, blink, strike and background colours map to nothing.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any, ClassVar, cast

from markdown_it import MarkdownIt
from markdown_it.token import Token
from prompt_toolkit.utils import get_cwidth
from rich import box
from rich.color import Color, ColorSystem
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.containers import Renderables
from rich.markdown import (
    BlockQuote,
    CodeBlock,
    Heading,
    HorizontalRule,
    ListElement,
    ListItem,
    Markdown,
    MarkdownElement,
    TableElement,
)
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.syntax import Syntax, SyntaxTheme
from rich.table import Table
from rich.text import Text
from rich.theme import Theme

from ._sanitize import sanitize_inline

__all__ = ["render_markdown"]

Fragment = tuple[str, str]
Line = list[Fragment]

# Indentation of a code block, in cells.
_CODE_INDENT = 2

# Strategy: a nested list, quote or code block gives up its indentation once fewer than
# this many cells (or half the screen, on a very narrow one) would be left for its text.
# Deep nesting then stacks instead of squeezing the text into a sliver, or below zero
# cells, which rich does not survive.
_MIN_BODY = 12

# A width large enough that measuring a table against it is never clamped.
_UNBOUNDED = 1 << 20

_ANSI_NAMES = (
    "ansiblack",
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansigray",
    "ansibrightblack",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
    "ansiwhite",
)

# Strategy: one theme per mode, replacing every markdown style rich knows, so that what
# reaches the converter is already what the screen can show. Colours are the ones that
# read on light and dark backgrounds alike (no yellow, cyan, white or black text).
_COMMON_STYLES = {
    "markdown.paragraph": "none",
    "markdown.text": "none",
    "markdown.em": "underline",
    "markdown.emph": "underline",
    "markdown.strong": "bold",
    "markdown.code": "reverse",
    "markdown.code_block": "none",
    "markdown.block_quote": "none",
    "markdown.block_quote.bar": "none",
    "markdown.list": "none",
    "markdown.item": "none",
    "markdown.item.bullet": "bold",
    "markdown.item.number": "bold",
    "markdown.h1.border": "none",
    "markdown.h1": "bold underline",
    "markdown.h2": "bold underline",
    "markdown.h3": "bold",
    "markdown.h4": "bold",
    "markdown.h5": "bold",
    "markdown.h6": "bold",
    "markdown.h7": "bold",
    "markdown.link": "underline",
    "markdown.link_url": "underline",
    "markdown.s": "none",
    "markdown.kbd": "bold",
    "markdown.table.border": "none",
    "markdown.table.header": "bold",
    "markdown.hr": "none",
}
_MONO_THEME = Theme(_COMMON_STYLES)
_COLOR_THEME = Theme(
    {
        **_COMMON_STYLES,
        "markdown.code": "magenta",
        "markdown.block_quote.bar": "green",
        "markdown.item.bullet": "bold blue",
        "markdown.item.number": "bold blue",
        "markdown.h1": "bold underline blue",
        "markdown.h2": "bold underline blue",
        "markdown.h3": "bold blue",
        "markdown.h4": "bold blue",
        "markdown.h5": "bold blue",
        "markdown.h6": "bold blue",
        "markdown.h7": "bold blue",
        "markdown.link": "underline blue",
        "markdown.link_url": "underline blue",
        "markdown.hr": "bright_black",
    }
)

# rich hands Markdown's ``code_theme`` string to every code block; these two names tell
# the code block which mode it is rendering for.
_MONO = "kindlessh-mono"
_COLOR = "kindlessh-color"


class _CodeTheme(SyntaxTheme):
    """Code styles by Pygments token family, with no background at all.

    Token types are tuples (``Token.Literal.String == ("Literal", "String")``), so the
    lookup walks up the family without importing Pygments. A token not listed keeps the
    terminal's own colour.
    """

    def __init__(self, styles: dict[tuple[str, ...], str]) -> None:
        self._styles = {key: Style.parse(value) for key, value in styles.items()}
        self._cache: dict[tuple[str, ...], Style] = {}

    def get_style_for_token(self, token_type: Any) -> Style:
        key = tuple(token_type)
        style = self._cache.get(key)
        if style is None:
            probe = key
            while probe and probe not in self._styles:
                probe = probe[:-1]
            style = self._styles.get(probe, Style.null())
            self._cache[key] = style
        return style

    def get_background_style(self) -> Style:
        return Style.null()


_CODE_THEME = _CodeTheme(
    {
        ("Keyword",): "bold magenta",
        ("Operator", "Word"): "magenta",
        ("Name", "Builtin"): "magenta",
        ("Name", "Function"): "blue",
        ("Name", "Class"): "blue",
        ("Name", "Decorator"): "blue",
        ("Name", "Tag"): "blue",
        ("Literal", "String"): "green",
        ("Literal", "Number"): "red",
        ("Comment",): "bright_black",
        ("Generic", "Deleted"): "red",
        ("Generic", "Inserted"): "green",
        ("Generic", "Heading"): "bold",
        ("Generic", "Subheading"): "bold",
        ("Generic", "Prompt"): "bold",
    }
)


def _narrow(console: Console, width: int, indent: int) -> bool:
    """Whether indenting by ``indent`` would leave too little of ``width`` for text
    (``console.width`` is the width of the whole screen)."""
    return width - indent < min(_MIN_BODY, (console.width + 1) // 2)


def _hang(
    console: Console,
    options: ConsoleOptions,
    body: RenderableType,
    style: Style | None,
    first: Segment,
    rest: Segment,
    marker: Segment | None,
) -> RenderResult:
    """Render ``body`` with ``first`` before its first line and ``rest`` before the others.

    When that would leave too little room (see ``_narrow``), the body takes the full
    width instead, after ``marker`` on a line of its own (if there is one).
    """
    width = options.max_width
    new_line = Segment.line()
    if _narrow(console, width, first.cell_length):
        if marker is not None:
            yield marker
            yield new_line
        for line in console.render_lines(body, options, style=style, pad=False):
            yield from line
            yield new_line
        return
    inner = options.update(width=width - first.cell_length)
    for index, line in enumerate(console.render_lines(body, inner, style=style, pad=False)):
        yield first if index == 0 else rest
        yield from line
        yield new_line


def _spaced(children: Renderables, in_list: bool) -> Renderables:
    """The blocks of a quote or list item with a blank line between them, as at the top
    level (rich runs them together). In a list item a nested list hugs its text."""
    spaced = Renderables()
    # Renderables iterates fine; its annotation says Iterable where Iterator is meant.
    for index, child in enumerate(cast(Iterable[RenderableType], children)):
        if index and not (in_list and isinstance(child, ListElement)):
            spaced.append(Text())
        spaced.append(child)
    return spaced


class _Heading(Heading):
    """A heading as plain left-aligned text (rich centres level 1, or boxes it)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = self.text.copy()
        text.justify = "left"
        yield text


@lru_cache(maxsize=64)
def _lexer(name: str) -> Any:
    """The Pygments lexer for a fence's language name (plain text if unknown).

    Strategy: looked up once per name; an unknown name makes Pygments scan its plugins,
    and a streaming fence goes through every prefix of its name (``p``, ``py``, ...).
    """
    syntax = Syntax("", name)
    return syntax.lexer or syntax.default_lexer


def _code_pieces(code: str) -> list[str]:
    """Cut code before each line that starts in column 0 after a blank line.

    Strategy: each piece is highlighted on its own and cached, so while a long block
    streams in only its last piece goes through Pygments again (which costs several
    microseconds a character). Code rarely carries lexer state across such a line; when
    it does (a blank line inside a multi-line string), only colours suffer.
    """
    pieces: list[str] = []
    current: list[str] = []
    after_blank = False
    for line in code.split("\n"):
        if after_blank and current and line[:1] not in ("", " "):
            pieces.append("\n".join(current))
            current = []
        current.append(line)
        after_blank = not line.strip()
    pieces.append("\n".join(current))
    return pieces


@lru_cache(maxsize=256)
def _highlight(lexer_name: str, piece: str) -> tuple[Text, ...]:
    """The lines of a piece of code in colour (shared: callers must not change them)."""
    highlighted = Syntax(piece, _lexer(lexer_name), theme=_CODE_THEME).highlight(piece)
    # highlight() ends the text with a newline; allow_blank keeps inner blank lines.
    return tuple(highlighted.split("\n", allow_blank=True)[: piece.count("\n") + 1])


class _CodeBlock(CodeBlock):
    """A fenced or indented code block: indented, no background, wrapped only if long."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        code = str(self.text).rstrip()
        lines: list[Text] = []
        if self.theme == _COLOR:
            for piece in _code_pieces(code):
                lines.extend(_highlight(self.lexer_name, piece))
        else:
            # Strategy: 1-bit mode shows code plain. Bold keywords are all it could add,
            # not worth Pygments' time (the largest cost of a code-heavy answer).
            lines = [Text(line) for line in code.split("\n")]
        width = options.max_width
        indent = 0 if _narrow(console, width, _CODE_INDENT) else _CODE_INDENT
        pad = Segment(" " * indent)
        new_line = Segment.line()
        for line in lines:
            for part in _wrap_code(console, line, width - indent):
                if indent:
                    yield pad
                yield from part.render(console)
                yield new_line


def _wrap_code(console: Console, line: Text, width: int) -> list[Text]:
    """One line of code as pieces of at most ``width`` cells.

    Strategy: a line that fits is left alone. A longer one breaks at spaces (a token
    longer than the line is cut), and its continuations hang two cells deeper than the
    line's own indentation, so they do not pass for lines of their own.
    """
    if line.cell_len <= width:
        return [line]
    plain = line.plain
    hang = min(len(plain) - len(plain.lstrip(" ")) + 2, width // 2)
    pieces: list[Text] = []
    rest, room = line, width
    while rest.cell_len > room:
        head = rest.wrap(console, room, justify="default", overflow="fold", no_wrap=False)[0]
        taken = len(head.plain)
        if taken == 0:
            break
        pieces.append(Text.assemble(" " * hang, head) if pieces else head)
        rest = rest[taken:]
        rest = rest[len(rest.plain) - len(rest.plain.lstrip(" ")) :]
        room = width - hang
    if rest.plain:
        pieces.append(Text.assemble(" " * hang, rest) if pieces else rest)
    return pieces


class _BlockQuote(BlockQuote):
    """A block quote behind a ``│`` bar (rich's half block is rarer in fonts)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        bar = Segment("│ ", console.get_style("markdown.block_quote.bar", default="none"))
        body = _spaced(self.elements, in_list=False)
        yield from _hang(console, options, body, self.style, bar, bar, None)


class _HorizontalRule(HorizontalRule):
    """A horizontal rule: a full-width line of ``─`` and a blank line."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        style = console.get_style("markdown.hr", default="none")
        yield Text("─" * options.max_width, style=style)
        yield Text()


class _ListItem(ListItem):
    """A list item with a hanging indent; numbers keep their dot (``1.``)."""

    def render_bullet(self, console: Console, options: ConsoleOptions) -> RenderResult:
        style = console.get_style("markdown.item.bullet", default="none")
        body = _spaced(self.elements, in_list=True)
        bullet, blank, alone = Segment(" • ", style), Segment("   "), Segment("•", style)
        yield from _hang(console, options, body, self.style, bullet, blank, alone)

    def render_number(
        self, console: Console, options: ConsoleOptions, number: int, last_number: int
    ) -> RenderResult:
        # rich passes one past the last number; the widest numeral sets the indent.
        digits = len(str(max(number, last_number - 1)))
        style = console.get_style("markdown.item.number", default="none")
        body = _spaced(self.elements, in_list=True)
        numeral = f"{number}."
        first = Segment(numeral.rjust(digits + 2) + " ", style)
        blank = Segment(" " * (digits + 3))
        yield from _hang(console, options, body, self.style, first, blank, Segment(numeral, style))


class _TableElement(TableElement):
    """A table when it fits without cutting words, else one record per row."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        header: list[Text] = []
        if self.header is not None and self.header.row is not None:
            header = [cell.content for cell in self.header.row.cells]
        rows: list[list[Text]] = []
        if self.body is not None:
            rows = [[cell.content for cell in row.cells] for row in self.body.rows]
        table = Table(
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
            collapse_padding=True,
            style="markdown.table.border",
            header_style="markdown.table.header",
        )
        for heading in header:
            table.add_column(heading.copy())
        for row in rows:
            table.add_row(*row)
        # Strategy: a table's minimum width is what it needs with every cell wrapped at
        # its longest word. Measured against an unbounded width it is not clamped, so it
        # says whether rich can fit the table without cutting a word.
        needed = Measurement.get(console, options.update_width(_UNBOUNDED), table).minimum
        if header and needed <= options.max_width:
            yield table
        else:
            yield from _records(console, header, rows)


def _records(console: Console, header: list[Text], rows: list[list[Text]]) -> RenderResult:
    """A table too wide for the screen, as ``Header: value`` lines, a blank between rows."""
    head_style = console.get_style("markdown.table.header", default="none")
    if not rows:
        line = Text(justify="left")
        for index, heading in enumerate(header):
            if index:
                line.append(" | ")
            line.append_text(heading)
        line.stylize(head_style)
        yield line
        return
    for number, row in enumerate(rows):
        if number:
            yield Text()
        for index, cell in enumerate(row):
            line = Text(justify="left")
            name = header[index].plain.strip() if index < len(header) else ""
            if name:
                line.append(name, head_style)
                line.append(": ")
            line.append_text(cell)
            yield line


_PARSER = MarkdownIt("commonmark", {"html": False}).enable("table")
# markdown-it silently skips what lies inside a container opened at its nesting limit.
_MAX_NESTING = int(_PARSER.options["maxNesting"])
_CONTAINERS = frozenset(
    {"blockquote_open", "bullet_list_open", "ordered_list_open", "list_item_open"}
)


class _Markdown(Markdown):
    """rich's Markdown with the elements above, no raw HTML and visible link targets."""

    elements: ClassVar[dict[str, type[MarkdownElement]]] = {
        **Markdown.elements,
        "heading_open": _Heading,
        "fence": _CodeBlock,
        "code_block": _CodeBlock,
        "blockquote_open": _BlockQuote,
        "hr": _HorizontalRule,
        "list_item_open": _ListItem,
        "table_open": _TableElement,
    }


# Strategy: rich's constructor builds a new markdown-it parser on every call, a large
# share of the cost of a small document. A document is instead a shallow copy of one
# made at import, given its text, tokens and mode; rich's own attributes carry over.
_TEMPLATE = _Markdown("", hyperlinks=True)


def _document(markup: str, mode: str) -> _Markdown:
    """A rich document for ``markup``, parsed without HTML or strikethrough (rich drops
    HTML blocks, text and all; kterm cannot strike, and the literal tildes can).

    Raises ValueError when the nesting is too deep for the parser, which would drop text.
    """
    document = copy.copy(_TEMPLATE)
    document.markup = markup
    document.code_theme = mode
    document.parsed = _PARSER.parse(markup)
    for token in document.parsed:
        if token.children:
            token.children = _inline(token.children)
        elif token.level >= _MAX_NESTING - 1 and token.type in _CONTAINERS:
            # Strategy: text nested that deep would vanish; the plain fallback shows it.
            raise ValueError("Markdown nested deeper than the parser reads")
    return document


def _inline(children: list[Token]) -> list[Token]:
    """Rewrite inline tokens: a link's target follows it, an image becomes its alt text,
    a single line break stays a line break."""
    out: list[Token] = []
    opened: tuple[Token, int] | None = None
    for token in children:
        if token.type == "softbreak":
            # As in chat apps: answers (poems, addresses, steps) are written with single
            # line breaks, and folding them into one paragraph garbles them.
            token = Token("hardbreak", "br", 0)
        if token.type == "image":
            alt = token.content.strip()
            out.append(Token("text", "", 0, content=f"[image: {alt}]" if alt else "[image]"))
            continue
        out.append(token)
        if token.type == "link_open":
            opened = (token, len(out))
        elif token.type == "link_close" and opened is not None:
            link, start = opened
            opened = None
            href = str(link.attrs.get("href", ""))
            shown = "".join(t.content for t in out[start:] if t.type in ("text", "code_inline"))
            if href and link.markup != "autolink" and href not in (shown, f"mailto:{shown}"):
                out.append(Token("text", "", 0, content=f" ({href})"))
    return out


@lru_cache(maxsize=1024)
def _style_string(style: Style, color: bool) -> str:
    """The prompt-toolkit style for a rich style (see the module docstring)."""
    parts: list[str] = []
    if style.bold:
        parts.append("bold")
    # Strategy: kterm has no italic, so italic (from any source) is underlined, as is a
    # link; a link's target is only ever shown as text, never as OSC 8.
    if style.underline or style.underline2 or style.italic or style.link:
        parts.append("underline")
    if style.reverse:
        parts.append("reverse")
    if color and style.color is not None:
        name = _ansi_name(style.color)
        if name:
            parts.append("fg:" + name)
    return " ".join(parts)


def _ansi_name(color: Color) -> str:
    """The prompt-toolkit name of the nearest of the sixteen ANSI colours, or ``""``."""
    if color.is_default:
        return ""
    number = color.downgrade(ColorSystem.STANDARD).number
    if number is None or not 0 <= number < len(_ANSI_NAMES):
        return ""
    return _ANSI_NAMES[number]


def _render_rich(text: str, width: int, color: bool) -> list[Line]:
    """The lines rich renders for ``text``, as fragments (not yet checked or folded)."""
    # A console of our own for every call: it writes nowhere, reads no environment that
    # matters (the width is given) and costs microseconds.
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system="256" if color else None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
        markup=False,
        no_color=False,
        theme=_COLOR_THEME if color else _MONO_THEME,
    )
    document = _document(text, _COLOR if color else _MONO)
    lines: list[Line] = []
    for segments in console.render_lines(document, console.options, pad=False):
        line: Line = []
        for segment in segments:
            if segment.control or not segment.text:
                continue
            style = _style_string(segment.style, color) if segment.style else ""
            line.append((style, segment.text))
        lines.append(line)
    return lines


def _render_plain(text: str, width: int) -> list[Line]:
    """Plain word-wrapped lines, for when rich fails.

    Strategy: a small wrapper of its own rather than ``_view.wrap``, so that this module
    imports nothing from the view (which imports it). Words longer than the line are
    left whole here and cut by ``_fold``.
    """
    lines: list[Line] = []
    for paragraph in text.split("\n"):
        current, used = "", 0
        for word in paragraph.split():
            cells = get_cwidth(word)
            if current and used + 1 + cells > width:
                lines.append([("", current)])
                current, used = "", 0
            current, used = (f"{current} {word}", used + 1 + cells) if current else (word, cells)
        lines.append([("", current)] if current else [])
    return lines


def _fold(line: Line, width: int) -> Iterator[Line]:
    """Cut ``line`` into lines of at most ``width`` cells.

    rich and prompt-toolkit measure a few characters differently (emoji sequences,
    variation selectors), so a line rich thought fitted may not: it is cut after its
    last space that fits. A character wider than the whole line cannot be shown at all,
    and becomes ``?``.
    """
    if sum(get_cwidth(text) for _, text in line) <= width:
        yield line
        return
    chars: list[tuple[str, str, int]] = []  # style, character, cells
    for style, text in line:
        for char in text:
            cells = get_cwidth(char)
            if cells > width:
                char, cells = "?", 1
            chars.append((style, char, cells))
    while chars:
        used, cut = 0, len(chars)
        for index, (_, _, cells) in enumerate(chars):
            if used + cells > width:
                cut = index
                break
            used += cells
        if cut < len(chars):
            # Strategy: cut after the last space that fits, as a word wrap would, so a
            # word (a run of wide characters too) moves whole to the next line; only a
            # word longer than the line is cut inside.
            space = max((i for i in range(cut) if chars[i][1] == " "), default=-1)
            if space > 0 and chars[cut][1] != " ":
                cut = space + 1
        head, chars = chars[:cut], chars[cut:]
        if not head:
            head, chars = chars[:1], chars[1:]
        yield _fragments(head)


def _fragments(chars: list[tuple[str, str, int]]) -> Line:
    """Characters with their styles back as fragments."""
    out: Line = []
    for style, char, _ in chars:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + char)
        else:
            out.append((style, char))
    return out


def _tidy(line: Line) -> Line:
    """Merge neighbouring fragments of one style and drop trailing spaces.

    A space at the end of a line is where rich wrapped it, in any style: in reverse
    video (inline code) it would show as a stray block, so it goes too.
    """
    merged: Line = []
    for style, text in line:
        if not text:
            continue
        if merged and merged[-1][0] == style:
            merged[-1] = (style, merged[-1][1] + text)
        else:
            merged.append((style, text))
    while merged:
        style, text = merged[-1]
        stripped = text.rstrip(" ")
        if stripped:
            merged[-1] = (style, stripped)
            break
        merged.pop()
    return merged


def _finish(lines: Iterable[Line], width: int) -> list[Line]:
    """Enforce the contract's guarantees on converted lines."""
    out: list[Line] = []
    for line in lines:
        # Strategy: every fragment passes the sanitiser once more (one regex scan when
        # clean), so the no-control-character guarantee does not rest on rich.
        safe = [(style, sanitize_inline(text)) for style, text in line]
        out.extend(_tidy(piece) for piece in _fold(safe, width))
    start, end = 0, len(out)
    while start < end and not out[start]:
        start += 1
    while end > start and not out[end - 1]:
        end -= 1
    return out[start:end]


# A fence opener or closer: indentation, the fence, the rest of the line.
_FENCE = re.compile(r"( *)(`{3,}|~{3,})(.*)")
# A link reference definition (``[label]: url``), which may serve links anywhere.
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:", re.MULTILINE)


def _blocks(text: str) -> list[str]:
    """Cut ``text`` into pieces that render the same apart as together.

    A cut falls only before a line that starts in column 0 after a blank line, outside
    any code fence: every block is closed there, whatever it was (an indented line could
    still belong to a list item or an indented code block, so it never starts a piece).
    Fences opened with up to three spaces of indentation are tracked as CommonMark does
    at the top level. In a malformed document (a fence in a list item closed in column
    0) the cuts follow the fences as written, where a parse of the whole would not; and
    a list whose items are separated by blank lines is cut into one list per item (with
    its own number), which shows the blank lines as written. A text with a link
    reference definition is not cut, since its links may be anywhere.

    Strategy: rendered pieces are cached, so while an answer streams in only its last
    piece is rendered again.
    """
    if _REFERENCE.search(text):
        return [text]
    blocks: list[str] = []
    current: list[str] = []
    fence: tuple[str, int] | None = None  # the fence's character and length
    after_blank = False
    for line in text.split("\n"):
        found = _FENCE.fullmatch(line)
        if fence is None:
            if after_blank and current and line[:1] not in ("", " "):
                blocks.append("\n".join(current))
                current = []
            if found is not None and len(found.group(1)) <= 3:
                marks = found.group(2)
                if not (marks[0] == "`" and "`" in found.group(3)):
                    fence = (marks[0], len(marks))
        elif (
            found is not None
            and found.group(2)[0] == fence[0]
            and len(found.group(2)) >= fence[1]
            and len(found.group(1)) <= 3
            and not found.group(3).strip()
        ):
            fence = None
        current.append(line)
        after_blank = not line.strip()
    blocks.append("\n".join(current))
    return blocks


# Shared by every session: about ten blocks per answer, a hundred answers streaming at
# once, and the screen's width; evicting a block that is still shown means rendering it
# again on every commit.
@lru_cache(maxsize=8192)
def _render_block(block: str, width: int, color: bool) -> tuple[tuple[Fragment, ...], ...]:
    """The finished lines of one piece of an answer (see ``_blocks``), cached."""
    try:
        lines = _render_rich(block, width, color)
    except Exception:
        # Strategy: a bug or limit in rich or the parser on some odd input must not take
        # the answer off the screen: plain wrapped text is the safe degradation, and only
        # for the piece that failed.
        lines = _render_plain(block, width)
    return tuple(tuple(line) for line in _finish(lines, width))


def render_markdown(text: str, width: int, *, color: bool = False) -> list[Line]:
    """Render sanitised, possibly unfinished Markdown to lines of at most ``width`` cells.

    Args:
        text: the answer so far, already sanitised (no control character but ``\\n``).
        width: the screen width in cells. Below 1 nothing can be shown: ``[]``.
        color: add ANSI foreground colours (laptops); False keeps to 1-bit styling
            (bold, underline, reverse) for e-ink.

    Returns:
        One list of ``(style, text)`` fragments per screen line, fresh on every call;
        see the module docstring for the guarantees.
    """
    if width < 1:
        return []
    lines: list[Line] = []
    for block in _blocks(text):
        rendered = _render_block(block.rstrip(), width, color)
        if not rendered:
            continue
        if lines:
            lines.append([])  # rich's blank line between top-level blocks
        lines.extend(list(line) for line in rendered)
    return lines
