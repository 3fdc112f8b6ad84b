"""The transcript's state below the screen: scrolling, e-ink paging, what of a streaming
answer shows, and following the conversation's turns. No application, no event loop."""

from __future__ import annotations

from kindlessh._conversation import Turn
from kindlessh._scrollback import Scrollback
from kindlessh._view import Line


def texts(lines: list[Line]) -> list[str]:
    return ["".join(text for _, text, *_ in line) for line in lines]


def listing(first: int, last: int) -> str:
    """An answer of one short list item per line: ``- a1`` renders as `` • a1``."""
    return "\n".join(f"- a{i}" for i in range(first, last + 1))


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


# ----- smooth: scrolling ----------------------------------------------------------------


def test_smooth_shows_the_newest_lines_at_the_bottom() -> None:
    back = Scrollback()
    for i in range(1, 21):
        back.say(f"notice {i}")
    assert texts(back.lines(40, 5)) == [f"· notice {i}" for i in range(16, 21)]
    assert texts(back.lines(40, 50))[0] == "· notice 1"  # fewer lines than rows: all


def test_smooth_scrolls_by_screens_and_clamps_at_both_ends() -> None:
    changes = Changes()
    back = Scrollback(changes)
    for i in range(1, 21):
        back.say(f"notice {i}")
    back.lines(40, 5)
    changes.count = 0
    back.scroll(1, rows=8)  # a screen of 8 rows moves 3 lines (status, input, overlap)
    assert changes.count == 1
    assert texts(back.lines(40, 5)) == [f"· notice {i}" for i in range(13, 18)]
    back.scroll(10, rows=8)  # far beyond the top: the first lines, no further
    assert texts(back.lines(40, 5)) == [f"· notice {i}" for i in range(1, 6)]
    assert back.lines_up == 15
    back.scroll(-100, rows=8)
    assert back.lines_up == 0
    assert texts(back.lines(40, 5))[-1] == "· notice 20"


def test_smooth_scrolled_up_the_page_stays_still_while_the_answer_grows() -> None:
    back = Scrollback()
    turn = Turn("q?", answer=listing(1, 10), state="streaming")
    back.sync([turn])
    back.commit(turn)
    back.lines(40, 5)
    back.scroll(1, rows=7)  # two lines up
    page = texts(back.lines(40, 5))
    turn.answer = listing(1, 20)
    back.commit(turn)
    assert texts(back.lines(40, 5)) == page
    assert back.lines_up == 12


def test_anything_said_brings_the_reader_back_to_the_bottom() -> None:
    back = Scrollback()
    for i in range(1, 21):
        back.say(f"notice {i}")
    back.lines(40, 5)
    back.scroll(2, rows=10)
    assert back.lines_up == 10
    back.say("the newest")
    assert back.lines_up == 0
    assert texts(back.lines(40, 5))[-1] == "· the newest"


# ----- e-ink: paging --------------------------------------------------------------------


def test_eink_starts_the_last_question_at_the_top_of_a_page() -> None:
    back = Scrollback(paged=True)
    for i in range(1, 21):
        back.say(f"notice {i}")
    back.sync([Turn("q?", answer=listing(1, 3), state="done")])
    assert texts(back.lines(40, 10)) == ["> q?", "", " • a1", " • a2", " • a3", ""]


def test_eink_flips_a_full_page_keeping_one_line_and_ignores_trailing_blanks() -> None:
    back = Scrollback(paged=True)
    turn = Turn("q?", answer=listing(1, 8), state="streaming")
    back.sync([turn])
    back.commit(turn)
    # Question, blank, 8 items, and a trailing blank that must not cause a flip.
    assert texts(back.lines(40, 10))[0] == "> q?"
    turn.answer = listing(1, 9)
    back.commit(turn)
    assert texts(back.lines(40, 10)) == [f" • a{i}" for i in range(8, 10)] + [""]
    turn.answer = listing(1, 17)
    back.commit(turn)
    assert texts(back.lines(40, 10))[0] == " • a8"  # a page holds 9 new lines: no flip yet
    turn.answer = listing(1, 18)
    back.commit(turn)
    assert texts(back.lines(40, 10))[0] == " • a17"  # the last line of the page before


def test_eink_paged_back_the_page_is_pinned_while_the_answer_grows() -> None:
    changes = Changes()
    back = Scrollback(changes, paged=True)
    turn = Turn("q?", answer=listing(1, 20), state="streaming")
    back.sync([turn])
    back.commit(turn)
    now = texts(back.lines(40, 10))
    assert now[0] == " • a17"
    changes.count = 0
    back.scroll(1, rows=99)  # rows do not matter when paged: a page is a page
    assert changes.count == 1 and back.page_back == 1
    earlier = texts(back.lines(40, 10))
    assert earlier[0] == " • a8"
    turn.answer = listing(1, 40)
    back.commit(turn)
    assert texts(back.lines(40, 10)) == earlier
    back.scroll(-1, rows=99)
    # PgDn reads on from the page being read, not from the newest one.
    assert texts(back.lines(40, 10))[0] == " • a17"
    assert back.page_back == 2
    back.scroll(-2, rows=99)
    assert texts(back.lines(40, 10))[0] == " • a35"
    assert back.page_back == 0
    back.scroll(-1, rows=99)
    assert back.page_back == 0  # never beyond the current page
    assert texts(back.lines(40, 10))[0] == " • a35"


def test_restyle_switches_between_paging_and_scrolling_at_the_bottom() -> None:
    back = Scrollback(paged=True)
    for i in range(1, 21):
        back.say(f"notice {i}")
    back.sync([Turn("q?", answer="Short.", state="done")])
    back.scroll(1, rows=10)
    back.restyle(paged=False, color=True)
    assert back.page_back == 0 and back.look(30).color
    assert texts(back.lines(40, 3)) == ["", "Short.", ""]  # scrolling: the bottom lines


# ----- what of a turn shows -------------------------------------------------------------


def test_a_streaming_turn_shows_only_what_was_committed() -> None:
    changes = Changes()
    back = Scrollback(changes)
    turn = Turn("q?", answer="First", thoughts="Hmm", state="streaming")
    back.sync([turn])
    assert back.shown(turn).answer == "" and back.committed(turn) == (0, 0)
    shown = texts(back.lines(40, 10))
    assert shown[:2] == ["> q?", ""] and shown[2].startswith("(waiting for ")
    assert not any("First" in line for line in shown)
    changes.count = 0
    back.commit(turn)
    assert changes.count == 1
    turn.answer += " and more"
    assert back.shown(turn).answer == "First" and back.committed(turn) == (5, 3)
    turn.state = "done"
    assert back.shown(turn).answer == "First and more"  # an ended turn shows whole


def test_hidden_thoughts_are_marked_seen_without_committing_the_answer() -> None:
    back = Scrollback()
    turn = Turn("q?", thoughts="Let me think", state="streaming")
    back.sync([turn])
    back.mark_thoughts(turn)
    turn.answer = "Answer"
    assert back.committed(turn) == (0, 12)
    assert "(thinking)" in texts(back.lines(40, 10))
    back.show_thoughts = True
    assert "│ Let me think" in texts(back.lines(40, 10))


def test_a_screen_attached_mid_answer_shows_what_has_arrived() -> None:
    back = Scrollback()
    turn = Turn("q?", answer="Already here", state="streaming")
    back.show_turns([turn])
    assert back.shown(turn).answer == "Already here"
    assert "Already here" in texts(back.lines(40, 10))


# ----- following the conversation -------------------------------------------------------


def test_sync_adds_new_turns_drops_replaced_ones_and_keeps_notices() -> None:
    changes = Changes()
    back = Scrollback(changes)
    first, second = Turn("one", state="done"), Turn("two", state="done")
    back.say("hello")
    back.sync([first])
    back.scroll(1, rows=8)
    changes.count = 0
    back.sync([first])
    assert changes.count == 0  # nothing changed: no repaint
    back.sync([first, second])
    assert [i.turn for i in back.items] == [None, first, second]
    assert back.lines_up == 0 and changes.count == 1
    again = Turn("two", state="waiting")  # /retry replaced the last answer
    back.sync([first, again])
    assert [i.turn for i in back.items] == [None, first, again]


def test_sync_to_no_turns_says_the_conversation_was_deleted() -> None:
    back = Scrollback()
    turn = Turn("one", answer="x", state="done")
    back.say("hello")
    back.sync([turn])
    back.commit(turn)
    back.sync([])
    assert [i.notice.text for i in back.items if i.notice] == [
        "This conversation was deleted; a new one starts here."
    ]
    assert back.committed(turn) == (0, 0)


def test_retract_takes_back_only_the_last_notice() -> None:
    back = Scrollback()
    first = back.say("first")
    last = back.say("last")
    assert not back.retract(first)
    assert back.retract(last)
    assert [i.notice.text for i in back.items if i.notice] == ["first"]
    assert not back.retract(last)
