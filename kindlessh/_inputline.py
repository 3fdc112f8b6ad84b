"""The input line: a prompt-toolkit buffer with a bounded length and a bounded undo history.

Contract:
- :class:`InputLine` never holds more than ``max_chars()`` characters. An edit that would
  make it longer (a key typed, a paste, a yank) is not made: ``overflow(extra)`` is
  called first, with how many characters the edit would have added, and the edit is
  then abandoned by raising prompt-toolkit's ``EditReadOnlyBuffer`` (which its key
  processor ignores).
- Its undo history keeps the last :data:`UNDO_DEPTH` states.

Strategy: prompt-toolkit saves the whole line to the undo stack before most key presses
and never trims it, so typing a line of n characters held memory of the order of n
squared (50 KB typed in 100-byte packets: over a gigabyte).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prompt_toolkit.buffer import Buffer, EditReadOnlyBuffer

UNDO_DEPTH = 50


class InputLine(Buffer):
    """The chat's input line (see the module docstring)."""

    def __init__(
        self, max_chars: Callable[[], int], overflow: Callable[[int], None], **kwargs: Any
    ) -> None:
        self._max_chars = max_chars
        self._overflow = overflow
        super().__init__(**kwargs)

    def _set_text(self, value: str) -> bool:
        current = len(self.text)
        if len(value) > current and len(value) > self._max_chars():
            self._overflow(len(value) - current)
            # prompt-toolkit's own signal for an edit not made: its key processor
            # drops it quietly, wherever in its code the edit was tried.
            raise EditReadOnlyBuffer()
        return super()._set_text(value)

    def save_to_undo_stack(self, clear_redo_stack: bool = True) -> None:
        super().save_to_undo_stack(clear_redo_stack)
        excess = len(self._undo_stack) - UNDO_DEPTH
        if excess > 0:
            del self._undo_stack[:excess]
