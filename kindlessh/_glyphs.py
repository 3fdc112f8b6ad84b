"""What a screen can draw: emoji and rare symbols as text a Kindle's fonts have.

Contract:
- :func:`fold` takes text that has been through :func:`~kindlessh._sanitize.sanitize`
  and returns it for one glyph mode; it runs in the view (:mod:`._view`) before the text
  is wrapped, so stored text is never changed, only the screen.
- ``full``: unchanged.
- ``kindle``: an emoji or pictograph becomes its name in parentheses (👍 -> ``(thumbs
  up)``, names from the ``emoji`` package); typographic dashes, quotes, ellipses and
  spaces become their ASCII form; any other character outside the kept set becomes its
  NFKD form if that is in the set, else its Unicode name in parentheses (♞ ->
  ``(black chess knight)``), else ``?``. Kept: ASCII, Latin-1, Latin letters, Greek,
  Cyrillic, CJK (ideographs, kana, Hangul, fullwidth forms and CJK punctuation), and the
  drawing characters kindlessh's own screen uses (box drawing, ``•``, ``·``).
- ``ascii``: as ``kindle``, and the screen's own drawing (list bullets, rules, quote
  bars, table lines) is ASCII too: :func:`ui_char` maps it, :func:`allowed` says what
  may be on such a screen. Letters of the scripts above stay: they are the reader's
  language, not decoration; fullwidth forms fold to ASCII.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

import emoji

GlyphMode = Literal["full", "kindle", "ascii"]
GLYPH_MODES: tuple[GlyphMode, ...] = ("full", "kindle", "ascii")

# Typographic punctuation with an obvious ASCII form (NFKD leaves these alone).
_PLAIN = {
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--",
    "\u2015": "--", "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201a": ",",
    "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2032": "'", "\u2033": '"', "\u2039": "<", "\u203a": ">", "\u00ab": "<<",
    "\u00bb": ">>", "\u2026": "...", "\u00a0": " ", "\u2022": "*", "\u25cf": "*",
    "\u2192": "->", "\u2190": "<-", "\u2194": "<->", "\u21d2": "=>", "\u21d0": "<=",
    "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u2248": "~", "\u00d7": "x",
    "\u2713": "v", "\u2714": "v", "\u2717": "x", "\u2718": "x", "\u2605": "*",
    "\u2606": "*", "\u00b7": ".", "\u2500": "-", "\u2502": "|", "\u2501": "-",
}
# The screen's own drawing, in ascii mode.
_UI_ASCII = {"•": "*", "·": ".", "─": "-", "━": "-", "│": "|", "┃": "|", "…": "..."}


# Marks where a name was put in, until spacing is settled (sanitised text has no NUL).
_NAMED = "\x00"
_AFTER_WORD = re.compile(r"(?<=\w)\x00")


def _kept(char: str, mode: GlyphMode) -> bool:
    code = ord(char)
    if 0x20 <= code < 0x7F or (0xA0 < code <= 0xFF and mode == "kindle"):
        return True  # ASCII; Latin-1 (°, ½, ©) is in every Kindle font
    if unicodedata.category(char)[0] in ("L", "N", "M") and (
        0xA0 <= code <= 0x24F  # Latin-1 and Latin Extended
        or 0x370 <= code <= 0x52F  # Greek, Cyrillic
        or 0x3040 <= code <= 0x30FF  # kana
        or 0x3400 <= code <= 0x9FFF  # CJK ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul
    ):
        return True
    if mode == "kindle":
        return (
            0x2500 <= code <= 0x257F  # box drawing (our tables, rules, quote bars)
            or 0x3000 <= code <= 0x303F  # CJK punctuation
            or 0xFF01 <= code <= 0xFFEF  # fullwidth forms
            or char in "•·"
        )
    return False


def allowed(char: str, mode: GlyphMode) -> bool:
    """Whether ``char`` may appear on a screen in ``mode``."""
    return mode == "full" or char in "\n" or _kept(char, mode)


@lru_cache(maxsize=4096)
def _one(char: str, mode: GlyphMode) -> str:
    """The text shown for a character outside the kept set."""
    plain = _PLAIN.get(char)
    if plain is not None:
        return plain
    folded = "".join(
        c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
    )
    if folded and folded != char and all(_kept(c, mode) for c in folded):
        return folded
    name = unicodedata.name(char, "")
    if not name or unicodedata.category(char) in ("Mn", "Me", "Cf", "Co", "Cn"):
        return "" if unicodedata.category(char) in ("Mn", "Me", "Cf") else "?"
    return f"{_NAMED}({name.lower()})"


def _emoji_name(found: str, data: dict[str, str]) -> str:
    """``(thumbs up)`` for 👍: the emoji package's English name, as words."""
    name = str(data.get("en") or "").strip(":").replace("_", " ")
    plain = "".join(c if _kept(c, "ascii") else _one(c, "ascii") for c in name).strip()
    return f"{_NAMED}({plain})" if plain else "?"


def fold(text: str, mode: GlyphMode) -> str:
    """``text`` as a screen in ``mode`` shows it (see the module contract)."""
    if mode == "full" or text.isascii():
        return text
    # Strategy: emoji first, as whole sequences (a flag, a skin tone, a family joined by
    # zero-width joiners is one picture and one name), then character by character.
    text = emoji.replace_emoji(text, replace=_emoji_name)
    out: list[str] = []
    for char in text:
        if _kept(char, mode) or char in "\n\x00":
            out.append(char)
        else:
            out.append(_one(char, mode))
    result = "".join(out)
    # A name next to a word reads as one: "ok👍" -> "ok (thumbs up)"; "f()" stays.
    return _AFTER_WORD.sub(" ", result).replace(_NAMED, "") if _NAMED in result else result


def ui_char(text: str, mode: GlyphMode) -> str:
    """The screen's own drawing in ``text`` as ``mode`` shows it (ascii: ASCII)."""
    if mode != "ascii" or text.isascii():
        return text
    return "".join(_UI_ASCII.get(c, c if _kept(c, mode) else _table(c)) for c in text)


def _table(char: str) -> str:
    """Box drawing (rich's tables) in ASCII: lines and corners."""
    name = unicodedata.name(char, "")
    if "HORIZONTAL" in name and "VERTICAL" not in name:
        return "-"
    if "VERTICAL" in name and "HORIZONTAL" not in name:
        return "|"
    if name.startswith("BOX DRAWINGS"):
        return "+"
    return _one(char, "ascii")
