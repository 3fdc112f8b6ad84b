"""A sans-I/O Server-Sent Events decoder (WHATWG HTML §9.2.5-9.2.6).

Contract:
- ``SSEDecoder.feed(data: bytes) -> list[ServerSentEvent]`` takes any slice of the body
  and returns the events it completed; ``close()`` marks the end of the body.
- Lines end only at ``\\r\\n``, ``\\r`` or ``\\n``, even when a ``\\r\\n`` is split across
  two feeds. U+2028, U+0085, ``\\x0c`` and friends stay inside data.
- Each completed line is decoded as UTF-8 on its own (``errors="replace"``), so a
  multi-byte character split across feeds is never mangled. One leading BOM is stripped.
- Lines that are not SSE fields this decoder uses (no ``data``/``event``/``id``/``retry``
  and not a comment) are kept, in order, for :meth:`SSEDecoder.take_unparsed`: Gemini
  appends a raw JSON error object to a 200 stream that way, and a strict parser would
  silently drop it.
- Memory is bounded: a line, an event's data, or the unparsed text over
  ``max_event_size`` bytes raises :class:`SSEEventTooLarge`.
- ``close()`` raises :class:`SSETruncated` when the body ended inside an event (undispatched
  data, or an unterminated ``data``/``event``/``id``/``retry`` line). An unterminated line
  that is not such a field goes to the unparsed text instead.

No I/O and no knowledge of Gemini or httpx live here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import StreamProtocolError, TruncatedStream

_FIELDS = (b"data", b"event", b"id", b"retry")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEEventTooLarge(StreamProtocolError):
    """One event (or line) is larger than the decoder's bound."""


class SSETruncated(TruncatedStream):
    """The body ended in the middle of an event; ``partial`` holds what was pending."""

    def __init__(self, message: str, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


class SSEDecoder:
    """Incremental SSE decoder. See the module docstring for the contract.

    Args:
        max_event_size: the largest line, event data or unparsed text, in bytes.
    """

    def __init__(self, max_event_size: int = 1 << 20) -> None:
        self.max_event_size = max_event_size
        # Strategy: keep the unterminated line as a list of pieces and scan only the new
        # bytes, so a huge event fed one byte at a time stays linear.
        self._pieces: list[bytes] = []
        self._pending = 0
        self._skip_lf = False  # the last feed ended in \r: a leading \n is its partner
        self._started = False  # the BOM check has been done
        self._closed = False
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self._unparsed: list[str] = []
        self._unparsed_size = 0

    # ----- bytes to lines -------------------------------------------------------------

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Feed the next bytes of the body.

        Args:
            data: any number of bytes, split anywhere.

        Returns:
            The events completed by these bytes, in order.

        Raises:
            SSEEventTooLarge: a line or an event grew beyond ``max_event_size``.
            RuntimeError: the decoder was closed.
        """
        if self._closed:
            raise RuntimeError("feed() after close()")
        events: list[ServerSentEvent] = []
        if not data:
            return events
        if not self._started:
            head = b"".join(self._pieces) + data
            if len(head) < 3 and b"\xef\xbb\xbf".startswith(head):
                self._pieces, self._pending = [head], len(head)
                return events
            self._pieces, self._pending = [], 0
            self._started = True
            data = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        start = 0
        size = len(data)
        while start < size:
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            else:
                end = cr
                if cr + 1 < size:
                    nxt = cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    nxt = cr + 1
                    self._skip_lf = True
            piece = data[start:end]
            if self._pieces:
                self._pieces.append(piece)
                line = b"".join(self._pieces)
                self._pieces, self._pending = [], 0
            else:
                line = piece
            if len(line) > self.max_event_size:
                raise self._too_large()
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = nxt
        if start < size:
            rest = data[start:]
            self._pending += len(rest)
            if self._pending > self.max_event_size:
                raise self._too_large()
            self._pieces.append(rest)
        return events

    def _too_large(self) -> SSEEventTooLarge:
        mib = self.max_event_size / (1 << 20)
        return SSEEventTooLarge(
            f"The model sent a single message larger than {mib:g} MiB; the answer was stopped."
        )

    # ----- lines to events ------------------------------------------------------------

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        colon = raw.find(b":")
        if colon < 0:
            name, value = raw, b""
        else:
            name, value = raw[:colon], raw[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            text = value.decode("utf-8", "replace")
            self._data.append(text)
            self._data_size += len(value) + 1
            if self._data_size > self.max_event_size:
                raise self._too_large()
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value and value.isdigit():
                self._retry = int(value)
        else:
            self._keep_unparsed(raw.decode("utf-8", "replace"))
        return None

    def _keep_unparsed(self, line: str) -> None:
        self._unparsed.append(line + "\n")
        self._unparsed_size += len(line) + 1
        if self._unparsed_size > self.max_event_size:
            raise self._too_large()

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._last_id,
            retry=self._retry,
        )
        self._data, self._data_size, self._event = [], 0, ""
        return event

    # ----- end of body ----------------------------------------------------------------

    def close(self) -> list[ServerSentEvent]:
        """Mark the end of the body.

        Returns:
            Always an empty list: per the spec an event that was not ended by a blank line
            is not dispatched.

        Raises:
            SSETruncated: the body ended inside an event.
        """
        if self._closed:
            return []
        self._closed = True
        tail = b"".join(self._pieces)
        self._pieces, self._pending = [], 0
        if not self._started and tail:
            tail = tail[3:] if tail.startswith(b"\xef\xbb\xbf") else tail
        pending = "\n".join(self._data)
        if tail:
            name = tail.split(b":", 1)[0]
            if name in _FIELDS or self._data:
                partial = pending + ("\n" if pending else "") + tail.decode("utf-8", "replace")
                raise SSETruncated(
                    "The answer stream broke off in the middle of a message.", partial
                )
            self._keep_unparsed(tail.decode("utf-8", "replace"))
        if self._data:
            raise SSETruncated("The answer stream broke off in the middle of a message.", pending)
        return []

    def take_unparsed(self) -> str:
        """Return and forget the lines that were not SSE fields (each ends in ``\\n``)."""
        text = "".join(self._unparsed)
        self._unparsed, self._unparsed_size = [], 0
        return text

    @property
    def pending_unparsed(self) -> str:
        """The lines that were not SSE fields so far, without forgetting them."""
        return "".join(self._unparsed)
