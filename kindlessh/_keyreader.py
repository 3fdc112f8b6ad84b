"""Key presses from the text a client sends, in linear time and bounded memory.

Contract:
- :meth:`KeyReader.feed` turns text from the client into prompt-toolkit key presses, the
  keys prompt-toolkit's own parser gives for every sequence a terminal sends for a key;
  the state carries across calls, so a sequence split anywhere reads the same. Its cost
  is linear in the text and what it holds between calls is bounded, whatever arrives:
  - an escape sequence longer than :data:`MAX_SEQUENCE` characters is dropped, up to its
    end; so is a complete one that is no key (a terminal's reply, a mouse report, a key
    prompt-toolkit does not know); a string (OSC, DCS, SOS, PM, APC) is always dropped,
    kindlessh never asks the terminal for one;
  - a bracketed paste becomes one ``BracketedPaste`` key; one over ``max_paste``
    characters becomes a :class:`RefusedPaste` (its size, not its text);
  - a run of :data:`PASTE_BURST` or more plain characters becomes one paste.
- :meth:`KeyReader.flush` (no input for a while) gives a sequence left open as the keys
  it is: a lone ESC is the Escape key, ``ESC [`` is Alt-[.

Strategy: prompt-toolkit's ``Vt100Parser`` re-matches the whole sequence so far at every
character and caches every prefix it ever sees in a module-wide dict, so ``ESC [`` and
20,000 digits cost time and memory with the square of the length (and the memory stays
for the life of the process); its bracketed paste searches the whole paste so far for
the end mark at every read. This reader looks each complete sequence up once in
prompt-toolkit's table of sequences instead, and searches a paste only where it grew.
"""

from __future__ import annotations

import re

from prompt_toolkit.input.ansi_escape_sequences import ANSI_SEQUENCES
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

# Strategy: the longest key sequence a terminal sends is xterm's modifyOtherKeys form,
# ``ESC [ 27 ; <modifier> ; <code> ~`` (at most 18 characters for any Unicode code
# point); the longest in prompt-toolkit's table is 10. Replies kindlessh never asks for
# (device attributes, with xterm's at most 30 parameters of a few digits each) are
# dropped whatever their length. 32 leaves room for every key and nothing more.
MAX_SEQUENCE = 32

# A run of plain text this long in one read is a paste rather than typing.
PASTE_BURST = 256

_PASTE_START = "\x1b[200~"
_PASTE_END = "\x1b[201~"
_STRING_INTRODUCERS = "]PX^_"  # OSC, DCS, SOS, PM, APC
_CONTROL = re.compile("[\x00-\x1f\x7f]")

_TEXT, _ESC, _CSI, _SS3, _STRING, _STRING_ESC, _DROP, _PASTE = range(8)


class RefusedPaste(str):
    """A bracketed paste over the bound: empty text that says how long the paste was."""

    size: int

    def __new__(cls, size: int) -> RefusedPaste:
        self = super().__new__(cls, "")
        self.size = size
        return self


class KeyReader:
    """Turns client text into key presses (see the module docstring).

    Args:
        max_paste: the longest bracketed paste kept, in characters.
    """

    def __init__(self, max_paste: int) -> None:
        self.max_paste = max_paste
        self.keys: list[KeyPress] = []
        self._state = _TEXT
        self._seq = ""  # the escape sequence so far (at most MAX_SEQUENCE characters)
        self._paste: list[str] = []
        self._paste_size = 0
        self._tail = ""  # the end of a paste so far that may begin its end mark

    # ----- keys out --------------------------------------------------------------------

    def _key(self, seq: str) -> None:
        key = ANSI_SEQUENCES.get(seq)
        if isinstance(key, tuple):  # Alt plus a key: its keys, the data on the first
            for i, k in enumerate(key):
                self.keys.append(KeyPress(k, seq if i == 0 else ""))
        elif key is not None:
            self.keys.append(KeyPress(key, seq))
        else:
            self.keys.append(KeyPress(seq, seq))

    def _text(self, text: str) -> None:
        """Plain text (no control character): typing, or a paste when it is long."""
        if len(text) >= PASTE_BURST:
            self.keys.append(KeyPress(Keys.BracketedPaste, text))
        else:
            self.keys.extend(KeyPress(c, c) for c in text)

    # ----- feeding ---------------------------------------------------------------------

    def feed(self, data: str) -> None:
        """Read ``data``; the keys found are appended to :attr:`keys`."""
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _TEXT:
                match = _CONTROL.search(data, i)
                end = n if match is None else match.start()
                if end > i:
                    self._text(data[i:end])
                if match is None:
                    return
                c = data[end]
                i = end + 1
                if c == "\x1b":
                    self._state, self._seq = _ESC, c
                else:
                    self._key(c)
            elif state == _PASTE:
                i = self._feed_paste(data, i)
            else:
                c = data[i]
                i += 1
                if not self._step(c):
                    i -= 1  # the character ended a sequence without being part of it

    def _step(self, c: str) -> bool:
        """One character inside a sequence; False when it is to be read again as text."""
        state = self._state
        code = ord(c)
        if c in "\x18\x1a" and state != _ESC:  # CAN and SUB cancel any sequence
            self._state = _TEXT
            return True
        if state == _ESC:
            if c == "[":
                self._state, self._seq = _CSI, "\x1b["
            elif c == "O":
                self._state, self._seq = _SS3, "\x1bO"
            elif c in _STRING_INTRODUCERS:
                self._state = _STRING
            elif "\x1b" + c in ANSI_SEQUENCES:
                self._state = _TEXT
                self._key("\x1b" + c)
            else:  # Escape, then the key (Alt plus a key, as prompt-toolkit reads it)
                self._state = _TEXT
                self._key("\x1b")
                return False
        elif state == _CSI:
            if 0x20 <= code <= 0x3F:  # parameters and intermediates
                self._seq += c
                if len(self._seq) > MAX_SEQUENCE:
                    self._state, self._seq = _DROP, ""
            elif 0x40 <= code <= 0x7E:  # the final character
                self._state, seq = _TEXT, self._seq + c
                if seq == _PASTE_START:
                    self._state = _PASTE
                    self._paste, self._paste_size, self._tail = [], 0, ""
                elif seq in ANSI_SEQUENCES:
                    self._key(seq)
            else:  # not a sequence after all: dropped, the character read as text
                self._state = _TEXT
                return False
        elif state == _SS3:
            self._state = _TEXT
            if "\x1bO" + c in ANSI_SEQUENCES:
                self._key("\x1bO" + c)
            elif not 0x20 <= code <= 0x7E:
                self._key("\x1b")
                self._key("O")
                return False
        elif state == _DROP:
            if 0x40 <= code <= 0x7E:
                self._state = _TEXT
            elif not 0x20 <= code <= 0x3F:
                self._state = _TEXT
                return False
        elif state == _STRING:
            if c == "\x07" or c == "\x9c":
                self._state = _TEXT
            elif c == "\x1b":
                self._state = _STRING_ESC
        elif state == _STRING_ESC:
            self._state = _TEXT
            if c != "\\":  # not the string's end: a new sequence began
                self._state, self._seq = _ESC, "\x1b"
                return False
        return True

    def _feed_paste(self, data: str, i: int) -> int:
        """Read a bracketed paste from ``data[i:]``; returns where it stopped."""
        # Strategy: search only what arrived, with the few characters before it that may
        # begin the end mark, so that a long paste costs its length once, not squared.
        window = self._tail + data[i:]
        at = window.find(_PASTE_END)
        if at < 0:
            keep = max(0, len(window) - (len(_PASTE_END) - 1))
            self._store(window[:keep])
            self._tail = window[keep:]
            return len(data)
        self._store(window[:at])
        size, text = self._paste_size, "".join(self._paste)
        self._paste, self._paste_size, self._tail = [], 0, ""
        self._state = _TEXT
        if size > self.max_paste:
            self.keys.append(KeyPress(Keys.BracketedPaste, RefusedPaste(size)))
        else:
            self.keys.append(KeyPress(Keys.BracketedPaste, text))
        return len(data) - (len(window) - at - len(_PASTE_END))

    def _store(self, text: str) -> None:
        self._paste_size += len(text)
        if self._paste_size <= self.max_paste:
            self._paste.append(text)
        else:
            self._paste = []  # over the bound: only its size is kept

    def flush(self) -> None:
        """No more input for now: a sequence left open becomes its keys (or goes)."""
        state = self._state
        if state == _ESC:
            self._key("\x1b")
        elif state in (_CSI, _SS3) and len(self._seq) == 2:
            self._key("\x1b")
            self._key(self._seq[1])
        elif state in (_STRING, _STRING_ESC, _DROP, _PASTE):
            return  # still dropping (or pasting) until the end comes
        self._state, self._seq = _TEXT, ""
