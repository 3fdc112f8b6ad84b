"""The one exception tree of kindlessh.

Every error a person can meet carries a message written for that person: it is shown as
one line in the chat transcript or printed once at start-up, never as a traceback.

```
KindleSSHError
  ConfigError                 bad or unreadable configuration (start-up)
  UserError                   a ``kindlessh user`` command cannot be done (bad name, key)
  UpstreamError               anything that went wrong talking to the model API
    ApiKeyMissing             no API key configured
    ApiKeyInvalid             the API rejected the key (400 API_KEY_INVALID, 401, 403)
    ModelNotFound             the configured model does not exist (404)
    BadRequest                the API rejected the request (other 4xx)
    UpstreamUnavailable       5xx, network and timeout failures
    RateLimited               429 that may free up soon; ``retry_after`` seconds
    QuotaExhausted            429 daily quota; ``resets_at`` text
    TruncatedStream           the stream ended before the answer was complete
      SSETruncated            the SSE body ended inside an event (``partial`` kept)
    StreamProtocolError       bytes that are not the SSE/JSON we expect
      SSEEventTooLarge        one SSE event, line or tail beyond the decoder's bound
  BudgetExceeded              a per-user budget is spent
  ServerBusy                  no upstream slot came free in time
  InputRejected               the user's input cannot be sent (too long, ...)
  StoreError                  the conversation store failed (disk, lock, corrupt file)
    ConversationNotFound      no such conversation for this user
  ProxyHeaderError            a PROXY protocol header that cannot be used (logged, not shown)
```

Contract: every exception class of the package is defined here and derives from
``KindleSSHError`` (a test walks the package to keep it so). The modules that raise
one re-export it where callers already import it from (``_sse``, ``_store``).

Strategy: ``str(exc)`` is the user-facing message, so the UI can show any
``KindleSSHError`` without knowing its type. Messages never contain the API key.
"""

from __future__ import annotations


class KindleSSHError(Exception):
    """Base class; ``str(exc)`` is a message meant for the person using kindlessh."""


class ConfigError(KindleSSHError):
    """The configuration cannot be used; the message names the file, key and problem."""


class UserError(KindleSSHError):
    """A user command cannot be done; the message names the user or key and the fix."""


class UpstreamError(KindleSSHError):
    """The model API failed; the message says what happened in plain words.

    Attributes:
        status: the HTTP status code when there was one, else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiKeyMissing(UpstreamError):
    """No API key is configured, so no request was made."""


class ApiKeyInvalid(UpstreamError):
    """The API refused the key (invalid, leaked, or not allowed)."""


class ModelNotFound(UpstreamError):
    """The configured model name is unknown to the API."""


class BadRequest(UpstreamError):
    """The API rejected the request for a reason other than the key or the model."""


class UpstreamUnavailable(UpstreamError):
    """The API could not be reached or failed on its side (5xx, network, timeout)."""


class RateLimited(UpstreamError):
    """A quota that may free up soon was hit; ``retry_after`` is the advised wait in
    seconds, if known; ``waiting`` is what to say while waiting to retry (worded by the
    provider), empty for the generic words."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        retry_after: float | None = None,
        waiting: str = "",
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.waiting = waiting


class QuotaExhausted(UpstreamError):
    """A daily quota is spent; ``resets_at`` says when it resets, in words."""

    def __init__(self, message: str, *, status: int | None = 429, resets_at: str = "") -> None:
        super().__init__(message, status=status)
        self.resets_at = resets_at


class TruncatedStream(UpstreamError):
    """The answer stream ended early: EOF mid-event or without a finish reason."""


class SSETruncated(TruncatedStream):
    """The SSE body ended in the middle of an event.

    Attributes:
        partial: what was pending, decoded: the event's ``data`` values received so far,
            joined with ``\\n``; then the unterminated last line as received, when it was
            a field line. A ``\\n`` separates the two when there are both.
    """

    def __init__(self, message: str, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


class StreamProtocolError(UpstreamError):
    """The upstream sent bytes we cannot interpret (oversized event, broken framing)."""


class SSEEventTooLarge(StreamProtocolError):
    """One SSE event, one line or the unparsed text grew beyond the decoder's bound."""


class BudgetExceeded(KindleSSHError):
    """A per-user limit (tokens, prompts) is spent; the message says when it frees up."""


class ServerBusy(KindleSSHError):
    """Every upstream request slot stayed in use for as long as a question may wait."""


class InputRejected(KindleSSHError):
    """The user's input was not sent; the message says why and how to fix it."""


class StoreError(KindleSSHError):
    """The conversation store failed; the message says what happened."""


class ConversationNotFound(StoreError):
    """The conversation does not exist, or belongs to someone else (we do not say which)."""


class ProxyHeaderError(KindleSSHError):
    """A PROXY protocol header is malformed, too long or names no usable address; the
    message says which, for the log line about the refused connection."""
