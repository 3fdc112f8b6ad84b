"""The input line: its length bound refuses whole edits, and its undo history is short."""

from __future__ import annotations

from prompt_toolkit.buffer import EditReadOnlyBuffer

from kindlessh._inputline import UNDO_DEPTH, InputLine


def test_an_edit_over_the_bound_is_not_made_and_is_reported() -> None:
    refused: list[int] = []
    line = InputLine(lambda: 10, refused.append, multiline=False)
    line.insert_text("x" * 8)
    try:
        line.insert_text("yyy")
    except EditReadOnlyBuffer:
        pass
    else:
        raise AssertionError("an edit over the bound was made")
    assert line.text == "x" * 8 and refused == [3]
    line.insert_text("zz")  # up to the bound is fine
    assert line.text == "x" * 8 + "zz"


def test_the_undo_history_keeps_only_the_last_states() -> None:
    line = InputLine(lambda: 100_000, lambda n: None, multiline=False)
    for i in range(5000):
        line.insert_text(str(i % 10))
        line.save_to_undo_stack()
    assert len(line._undo_stack) == UNDO_DEPTH
    line.undo()
    assert len(line.text) == 4999
