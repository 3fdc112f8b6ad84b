"""A sans-I/O Server-Sent Events decoder (WHATWG HTML §9.2.5-9.2.6).

Contract:

- ``SSEDecoder.feed(data)`` takes any slice of the response body, split anywhere, and
  returns the events that slice completed, in order. ``close()`` marks the end of the
  body. The same body gives the same events, the same unparsed text and the same
  ``close()`` outcome however it is split into feeds.
- Lines end only at ``\\r\\n``, ``\\r`` or ``\\n``, also when a ``\\r\\n`` is split across two
  feeds. U+2028, U+2029, U+0085, ``\\x0c`` and ``\\x1c``-``\\x1e`` are ordinary characters
  and stay inside data.
- Every completed line is decoded as UTF-8 on its own (``errors="replace"``), so a
  multi-byte character split across feeds is never mangled. One UTF-8 BOM at the very
  start of the body is dropped, even when it arrives split across feeds.
- Fields follow the spec: ``data`` lines are joined with ``\\n``; ``event`` sets the type
  of the next event (``"message"`` when unset); ``id`` persists across events and is
  ignored when it contains NUL; ``retry`` is kept only when it is all ASCII digits and,
  like ``id``, persists (it is the stream's reconnection time). A blank line dispatches
  the event; with no ``data`` line since the last dispatch it only resets the type.
  Lines starting with ``:`` are comments.
- Lines whose field name is none of ``data``/``event``/``id``/``retry`` are not dropped
  silently: their text is kept, in order and one ``\\n``-ended line each, for
  :meth:`SSEDecoder.take_unparsed`. Gemini appends a raw pretty-printed JSON error object
  (no ``data:`` prefix) to an HTTP 200 stream this way.
- Memory is bounded by ``max_event_size`` bytes: an event's data buffer (each ``data``
  value plus its ``\\n``), the unparsed text, and any single line each stay within it,
  counting the unterminated line still waiting for its end; going beyond raises
  :class:`SSEEventTooLarge`, after which the decoder accepts no more input.
- ``close()`` raises :class:`SSETruncated` only when the body ended inside an SSE event:
  ``data`` lines were received but no blank line dispatched them, or the unterminated
  last line is (or, being a prefix of one, may be) a ``data``/``event``/``id``/``retry``
  field line. An unterminated last line that is no such field, such as the closing
  ``}`` of a raw JSON tail, is added to the unparsed text instead; an unterminated
  comment is ignored. A dangling ``event`` type with no data is not an event and is not
  reported. Otherwise ``close()`` returns ``[]``: per the spec an event that was not
  ended by a blank line is never dispatched.
- Cost is linear in the input size, however the body is split: a feed scans only its own
  bytes, and an unterminated line is kept as a list of pieces joined once at its end.

No I/O, and no knowledge of Gemini or of the HTTP client, live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The decoder's errors live in the package's one tree; re-exported from here.
from ._errors import SSEEventTooLarge, SSETruncated

__all__ = ["SSEDecoder", "SSEEventTooLarge", "SSETruncated", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_FIELD_NAMES = (b"data", b"event", b"id", b"retry")
_OTHER_FIELDS = (b"event", b"id", b"retry")
# The longest line start that decides what a line is: "retry:" / "event:" are 6 bytes.
_HEAD = 6
# len(b"data:"): a pending data line's length minus this is at most its value plus the "\n"
# the line will add to the data buffer.
_DATA_PREFIX = 5

# What an unterminated line will be once it ends, judged from its first bytes.
_UNDECIDED = 0  # a prefix of a field name, no colon yet ("da", "retry")
_DATA = 1  # a ``data`` field
_FIELD = 2  # an ``event``, ``id`` or ``retry`` field
_COMMENT = 3  # starts with ":"
_UNKNOWN = 4  # anything else: goes to the unparsed text

_TRUNCATED_MESSAGE = "The answer stream broke off in the middle of a message."


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    Attributes:
        data: the ``data`` lines of the event joined with ``\\n``.
        event: the event type; ``"message"`` when the event had no ``event`` field.
        id: the last event ID seen on the stream so far (it persists across events).
        retry: the last valid reconnection time in milliseconds seen so far, if any.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


# Strategy: the decoder builds events through the slot descriptors instead of the generated
# frozen __init__ (which goes through object.__setattr__ once per field); that takes about a
# third off the cost of the one object made per event. The result is the same value: the
# class has no __post_init__ or validation to skip (keep it that way, or drop this).
_set_data: Callable[[ServerSentEvent, str], None] = ServerSentEvent.__dict__["data"].__set__
_set_event: Callable[[ServerSentEvent, str], None] = ServerSentEvent.__dict__["event"].__set__
_set_id: Callable[[ServerSentEvent, str], None] = ServerSentEvent.__dict__["id"].__set__
_set_retry: Callable[[ServerSentEvent, int | None], None] = ServerSentEvent.__dict__[
    "retry"
].__set__


def _classify(head: bytes) -> int:
    """Say what a line is from its first ``_HEAD`` bytes (or all of it, if shorter)."""
    if head[:1] == b":":
        return _COMMENT
    colon = head.find(b":")
    if colon >= 0:
        name = head[:colon]
        if name == b"data":
            return _DATA
        return _FIELD if name in _OTHER_FIELDS else _UNKNOWN
    if len(head) < _HEAD and any(field.startswith(head) for field in _FIELD_NAMES):
        return _UNDECIDED
    return _UNKNOWN


class SSEDecoder:
    """Incremental SSE decoder; see the module docstring for the full contract.

    Args:
        max_event_size: the bound, in bytes, on one event's data buffer, on the unparsed
            text and on any single line (including one still waiting for its end).

    Raises:
        ValueError: ``max_event_size`` is not positive.
    """

    def __init__(self, max_event_size: int = 1 << 20) -> None:
        if max_event_size < 1:
            raise ValueError("max_event_size must be positive")
        self._max = max_event_size
        # Strategy: the unterminated line is a list of pieces plus their total length, so
        # a line fed one byte at a time costs an append per byte and one join at its end.
        self._pieces: list[bytes] = []
        self._pending = 0
        # Strategy: instead of classifying the pending line on every feed, compare its
        # length with a cheap lower bound of what it may reach; only past that bound is
        # the exact limit for its kind worked out (see _check_pending).
        self._pending_limit = max_event_size
        self._pending_kind = _UNDECIDED
        self._bom = b""  # up to two bytes that may still be the start of a BOM
        self._started = False  # the BOM question is settled
        self._skip_lf = False  # the last feed ended in \r: a leading \n belongs to it
        self._closed = False
        # Strategy: data values stay bytes and are decoded once per event. That equals
        # decoding each line on its own because "\n" never continues a UTF-8 sequence.
        self._data: list[bytes] = []
        self._data_size = 0  # bytes of the spec's data buffer: each value plus "\n"
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self._unparsed: list[str] = []
        self._unparsed_size = 0  # bytes as received, each line plus "\n"

    # ----- bytes to lines ---------------------------------------------------------------

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Feed the next bytes of the body.

        Args:
            data: any number of bytes (possibly none), split anywhere.

        Returns:
            The events these bytes completed, in order (often none).

        Raises:
            SSEEventTooLarge: an event's data, the unparsed text or a line grew beyond
                ``max_event_size``. The decoder is then closed, and events completed
                earlier in the same call are not returned.
            RuntimeError: ``close()`` was already called, or an earlier feed raised
                ``SSEEventTooLarge``.
        """
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() called after close()")
        if type(data) is not bytes:
            data = bytes(data)
        if not self._started:
            data = self._strip_bom(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        if b"\r" in data:
            if data[-1] == 0x0D:
                self._skip_lf = True  # this "\r" ends its line; a "\n" next is its partner
            # Strategy: split on "\r\n" without copying, and prove every "\r" and "\n" was
            # part of one (two C-level counts). Only a body with lone "\r"s or mixed ends
            # pays for the normalising copies.
            lines = data.split(b"\r\n")
            ends = len(lines) - 1
            if data.count(b"\r") != ends or data.count(b"\n") != ends:
                lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        elif b"\n" in data:
            lines = data.split(b"\n")
        else:
            if data:
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._pending_limit:
                    self._check_pending()
            return []

        rest = lines.pop()
        if self._pieces:
            self._pieces.append(lines[0])
            lines[0] = b"".join(self._pieces)
        events: list[ServerSentEvent] = []
        # Strategy: the loop keeps the data buffer in locals and inlines the two line kinds
        # Gemini sends ("data: ..." and the blank line); it runs once per line.
        values = self._data
        size = self._data_size
        limit = self._max
        new_event = object.__new__
        try:
            for line in lines:
                if not line:
                    if values:
                        raw = values[0] if len(values) == 1 else b"\n".join(values)
                        event = new_event(ServerSentEvent)
                        _set_data(event, raw.decode("utf-8", "replace"))
                        _set_event(event, self._event or "message")
                        _set_id(event, self._last_id)
                        _set_retry(event, self._retry)
                        events.append(event)
                        values = []
                        size = 0
                    self._event = ""
                    continue
                if line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                else:
                    found = self._field_line(line)
                    if found is None:
                        continue
                    value = found
                size += len(value) + 1
                if size > limit:
                    raise self._too_large()
                values.append(value)
        except SSEEventTooLarge:
            self._closed = True
            raise
        finally:
            self._data = values
            self._data_size = size
        self._pieces = [rest] if rest else []
        self._pending = len(rest)
        self._pending_kind = _UNDECIDED
        self._pending_limit = self._max - max(
            self._data_size - _DATA_PREFIX, self._unparsed_size, 0
        )
        if self._pending > self._pending_limit:
            self._check_pending()
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop one BOM at the start of the body; hold back bytes that may begin one."""
        head = self._bom + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._bom = head
            return b""
        self._bom = b""
        self._started = True
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _check_pending(self) -> None:
        """Raise if the unterminated line went beyond the exact limit for its kind.

        Only called when the line passed ``_pending_limit``, a lower bound of every
        kind's limit (for an undecided line: its own length, so the next byte checks
        again). Each limit is at most what the finished line will be held to, so a body
        raises the same way however it is split.
        """
        kind = self._pending_kind
        if kind == _UNDECIDED:
            head = b""
            for piece in self._pieces:
                head += piece[: _HEAD - len(head)]
                if len(head) >= _HEAD:
                    break
            kind = self._pending_kind = _classify(head)
        if kind == _UNDECIDED:
            # At most five bytes, a prefix of a field name: nothing to bound yet.
            self._pending_limit = self._pending
            return
        if kind == _DATA:
            limit = self._max - self._data_size + _DATA_PREFIX
        elif kind == _UNKNOWN:
            limit = self._max - self._unparsed_size
        else:
            limit = self._max
        self._pending_limit = limit
        if self._pending > limit:
            self._closed = True
            raise self._too_large()

    def _too_large(self) -> SSEEventTooLarge:
        size = self._max
        if size >= 1 << 20:
            amount = f"{size / (1 << 20):g} MiB"
        elif size >= 1 << 10:
            amount = f"{size / (1 << 10):g} KiB"
        else:
            amount = f"{size} bytes"
        return SSEEventTooLarge(
            f"The model sent a single message larger than {amount}; the answer was stopped."
        )

    # ----- lines to events --------------------------------------------------------------

    def _field_line(self, line: bytes) -> bytes | None:
        """Handle a non-empty line that does not start with ``data:``.

        Returns:
            The value when the line is a ``data`` field (the caller adds it), else ``None``.
        """
        if line[0] == 0x3A:  # ":" starts a comment
            if len(line) > self._max:
                raise self._too_large()
            return None
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":  # only "data" with no colon gets here: an empty value
            return value
        if name not in _OTHER_FIELDS:
            self._keep_unparsed(line)
            return None
        if len(line) > self._max:
            raise self._too_large()
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif value.isdigit():  # retry; bytes.isdigit() accepts only ASCII digits
            self._retry = int(value)
        return None

    def _keep_unparsed(self, line: bytes) -> None:
        size = self._unparsed_size + len(line) + 1
        if size > self._max:
            raise self._too_large()
        self._unparsed_size = size
        self._unparsed.append(line.decode("utf-8", "replace") + "\n")

    # ----- end of body ------------------------------------------------------------------

    def close(self) -> list[ServerSentEvent]:
        """Mark the end of the body.

        An unterminated last line that is not a field line goes to the unparsed text
        (read it with :meth:`take_unparsed` afterwards, also after ``SSETruncated``).
        Calling ``close()`` again does nothing.

        Returns:
            Always an empty list: per the spec an event that was not ended by a blank line
            is never dispatched. (A list, so callers can treat it like :meth:`feed`.)

        Raises:
            SSETruncated: the body ended inside an event: ``data`` was received but not
                dispatched, or the unterminated last line is (or may be the start of) a
                ``data``/``event``/``id``/``retry`` field.
            SSEEventTooLarge: the unterminated last line does not fit in the unparsed
                text.
        """
        if self._closed:
            return []
        self._closed = True
        tail = b"".join(self._pieces) if self._started else self._bom
        self._pieces, self._pending, self._bom = [], 0, b""
        cut_field = b""
        if tail:
            kind = _classify(tail[:_HEAD])
            if kind == _UNKNOWN:
                self._keep_unparsed(tail)
            elif kind != _COMMENT:
                cut_field = tail
        if not cut_field and not self._data:
            return []
        parts = []
        if self._data:
            parts.append(b"\n".join(self._data).decode("utf-8", "replace"))
        if cut_field:
            parts.append(cut_field.decode("utf-8", "replace"))
        raise SSETruncated(_TRUNCATED_MESSAGE, "\n".join(parts))

    # ----- lines that were not SSE ------------------------------------------------------

    def take_unparsed(self) -> str:
        """Return and forget the text of the lines that were not SSE fields.

        Returns:
            Those lines as decoded text, in order, each ending in ``\\n``; ``""`` if none.
        """
        text = "".join(self._unparsed)
        self._unparsed = []
        self._unparsed_size = 0
        return text

    @property
    def pending_unparsed(self) -> str:
        """The text :meth:`take_unparsed` would return, without forgetting it."""
        if len(self._unparsed) > 1:
            # Strategy: keep the join, so asking again after each feed does not rejoin
            # every line from the first one.
            self._unparsed = ["".join(self._unparsed)]
        return self._unparsed[0] if self._unparsed else ""
