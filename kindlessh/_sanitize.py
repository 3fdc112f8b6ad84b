"""The one sanitiser for untrusted text on its way to a terminal.

Model output, stored history, usernames, TERM values and upstream error messages all
pass through :func:`sanitize` (or :func:`sanitize_inline` for one-line places) before
they reach the screen or a log.

Contract for :func:`sanitize`:

- Total: any ``str``, lone surrogates included, gives a ``str``; it never raises, and the
  result always encodes to UTF-8 strictly.
- Safe: the result has no C0 control except ``\\n`` (so no ESC, BEL, BS, CR, ``\\x01``
  or ``\\x02``), no DEL, no C1 control (U+0080-U+009F), no bidi embedding, override or
  isolate (U+202A-U+202E, U+2066-U+2069), no tag character (U+E0000-U+E007F), no
  surrogate (U+D800-U+DFFF) and no noncharacter U+FFFE/U+FFFF. None of these code
  points is printable by :meth:`str.isprintable`, so the safe set costs printable text
  nothing.
- Visible: every removed code point becomes a placeholder of printable ASCII:

  - caret notation for C0 and DEL: ``^[`` for ESC, ``^G`` for BEL, ``^H`` for BS,
    ``^A``/``^B`` for prompt-toolkit's zero-width markers, ``^?`` for DEL;
  - a lone CR (one not followed by LF) becomes ``^M``;
  - ``<9b>`` (two lower-case hex digits in angle brackets) for a C1 control;
  - ``<U+202E>`` (four or more upper-case hex digits) for everything else.

  Only the introducer is replaced; the rest of an escape sequence stays as plain text,
  so ``"\\x1b]52;c;aGk=\\x07"`` becomes ``"^[]52;c;aGk=^G"``.
- Normalising: ``\\r\\n`` becomes ``\\n``; U+2028 and U+2029 become ``\\n``; a tab becomes
  four spaces (see ``_TAB``).
- Faithful: every other code point passes through unchanged, so printable text (plus
  ``\\n``) comes back exactly as it went in: emoji, ZWJ sequences, CJK, combining marks.
- Idempotent: ``sanitize(sanitize(x)) == sanitize(x)``, because every placeholder and
  replacement is itself made of characters the sanitiser keeps.

Strategy: replace rather than delete. Deleting joins the text on either side of what was
removed, and an attacker can arrange the pieces so that the join is itself a new escape
sequence: a filter that deletes the sequence ``\\x1b[0m`` turns ``"\\x1b\\x1b[0m[2J"`` into
a live ``"\\x1b[2J"`` (clear screen). Deleting also hides the attempt: the reader sees
clean text and never learns that the model or a peer tried to write to their clipboard
or retitle their window. A replacement made of printable ASCII cannot combine with its
neighbours into anything a terminal acts on, because it contains no control, and a
visible ``^[]52;...`` tells the reader exactly what was there.
"""

from __future__ import annotations

import re

# A tab's width depends on the column it starts in, and only the view (which wraps the
# text to the terminal) knows columns. Expanding it here to a fixed four spaces keeps the
# result independent of layout and keeps ``\t`` (a C0 control whose cursor motion some
# old terminals get wrong) away from the screen.
_TAB = "    "

# Shown in place of a lone carriage return, which would otherwise send the cursor back
# to column 0 and let the rest of the line overwrite what came before it.
_LONE_CR = "^M"

# Everything the contract removes, plus the characters it rewrites (\t, \r, U+2028/9).
# \n (0x0a) is the only C0 control left out.
_UNSAFE = re.compile(
    "["
    "\x00-\x09\x0b-\x1f"  # C0 controls except \n
    "\x7f-\x9f"  # DEL and the C1 controls
    "\u2028\u2029"  # line and paragraph separators
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2066-\u2069"  # bidi isolates
    "\ud800-\udfff"  # surrogates (only lone ones can occur in a str)
    "\ufffe\uffff"  # noncharacters
    "\U000e0000-\U000e007f"  # tag characters
    "]"
)


def _placeholder(ch: str) -> str:
    """The visible stand-in for one code point matched by ``_UNSAFE``."""
    code = ord(ch)
    if ch == "\t":
        return _TAB
    if ch == "\r":
        return _LONE_CR  # "\r\n" was already folded to "\n" before matching
    if ch in "\u2028\u2029":
        return "\n"
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    if code <= 0x9F:
        return f"<{code:02x}>"
    return f"<U+{code:04X}>"


# Every code point the pattern can match, mapped once; the substitution callback is then
# a dictionary lookup. Built from the ranges in ``_UNSAFE`` above.
_RANGES = (
    (0x00, 0x09),
    (0x0B, 0x1F),
    (0x7F, 0x9F),
    (0x2028, 0x2029),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
    (0xD800, 0xDFFF),
    (0xFFFE, 0xFFFF),
    (0xE0000, 0xE007F),
)
_PLACEHOLDERS: dict[str, str] = {
    chr(code): _placeholder(chr(code)) for first, last in _RANGES for code in range(first, last + 1)
}


def _replace(match: re.Match[str]) -> str:
    return _PLACEHOLDERS[match.group()]


def sanitize(text: str) -> str:
    """Make untrusted text safe to show on a terminal.

    See the module docstring for the full contract. Clean text (the common case for a
    streamed answer) costs one regular-expression scan and comes back as the same object.

    Args:
        text: any string: model output, stored history, an upstream message. Lone
            surrogates are allowed.

    Returns:
        The text with ``\\r\\n`` folded to ``\\n``, U+2028/U+2029 turned into ``\\n``, tabs
        expanded to four spaces, and every other unsafe code point replaced by a visible
        placeholder of printable ASCII.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_replace, text)


def sanitize_inline(text: str, max_len: int | None = None) -> str:
    """Like :func:`sanitize`, for one-line places: usernames, TERM, log lines, messages.

    Line breaks (``\\n``, ``\\r\\n``, U+2028, U+2029) become the visible marker ``^J``
    rather than a space, so a value cannot pass itself off as two lines, or as one
    innocent line, in a log or a status bar. Like :func:`sanitize` it never raises and
    is idempotent.

    Args:
        text: any string, lone surrogates included.
        max_len: the longest result allowed, in code points, or None for no limit. When
            the text is longer it is cut and ends in ``…``, which counts towards the
            limit. A limit of zero or less gives ``""``.

    Returns:
        One line of safe text, at most ``max_len`` characters long when a limit is given.
    """
    line = sanitize(text).replace("\n", "^J")
    if max_len is None or len(line) <= max_len:
        return line
    if max_len <= 0:
        return ""
    return line[: max_len - 1] + "…"
