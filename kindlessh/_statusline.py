"""The status line under the transcript: what the screen is doing, in one row.

Contract: :func:`status_texts` says what the line says, longest wording first (an answer
that finished while the reader was away, the page of a long answer, paged back, a
passing state such as a retry, answering, scrolled up, or ready with the model's
name); :func:`fit` lays the first wording that fits into ``width`` cells, with ``/help``
at the right when there is room, and on a very narrow screen the shortest, cut to fit.
Both are pure: the screen calls them at every repaint.
"""

from __future__ import annotations

from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.utils import get_cwidth

from ._sanitize import sanitize_inline


def status_texts(
    *,
    page_back: int,
    answering: bool,
    turn_status: str | None,
    lines_up: int,
    model: str,
    page: tuple[int, int] | None = None,
    away: bool = False,
) -> tuple[str, ...]:
    """The wordings of the status line, longest first.

    Args:
        page_back: pages the e-ink reader has gone back (0: the current page).
        answering: whether an answer is coming.
        turn_status: the answer's passing state (waiting for a slot, retrying), if any.
        lines_up: lines the smooth reader has scrolled up (0: at the bottom).
        model: the model's name (untrusted: sanitised here).
        page: the e-ink page of the latest answer shown and how many it has.
        away: the latest answer finished while the reader was away.
    """
    if page is not None and page[1] > 1:
        number, total = page
        where = f"page {number}/{total}"
        if away and number == 1:
            return (
                f"Finished while you were away: {total} pages. PgDn reads on.",
                f"Finished while away: {total} pages. PgDn reads on.",
                f"{where} - PgDn reads on",
                where,
            )
        if number < total:
            return (f"{where} - PgDn reads on, End: newest", f"{where} - PgDn reads on", where)
        if not answering and not page_back:
            name = sanitize_inline(model, 40)
            return (f"{where} - {name} - ready", f"{where} - ready", where)
    if page_back:
        return (f"page {page_back} back - PgDn or /down", f"page -{page_back}")
    if answering and turn_status:
        return (turn_status,)
    if answering:
        return ("answering - Ctrl-C stops", "answering")
    if lines_up:
        return ("scrolled up - PgDn for more", "scrolled up")
    name = sanitize_inline(model, 40)
    return (f"{name} - ready", "ready")


def fit(texts: tuple[str, ...], width: int, *, hint: bool = True) -> StyleAndTextTuples:
    """The first of ``texts`` (longest first) that fits, with ``/help`` at the right
    when there is room (``hint=False``: never, so a sentence keeps its words); on a very
    narrow screen the shortest, cut to fit."""
    right = "/help "
    for text in texts if hint else ():
        left = " " + text
        if get_cwidth(left) + 1 + len(right) <= width:
            return [("", left + " " * (width - get_cwidth(left) - len(right)) + right)]
    for text in texts:
        left = " " + text
        if get_cwidth(left) <= width:
            return [("", left)]
    left = " " + texts[-1]
    while left and get_cwidth(left + "…") > width:
        left = left[:-1]
    return [("", left + "…" if left else "")]
