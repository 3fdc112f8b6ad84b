"""kindlessh: an SSH server that gives every session a chat with Google Gemini.

The public surface is small: run the server (``start_server``), load its configuration
(``load_config``), and catch its errors (the ``KindleSSHError`` tree).

The words used throughout, from the outside in:

- **connection**: one SSH client connected, from TCP accept to close
  (``_connection.Connection``): admission (``_guard``), login (``_keychoice``,
  ``_enrol``, ``_password_login``, ``_failcount``), whose limits it spends
  (``_holders``), and its bounds (``_rekeys``, ``_unused``). It opens at most one
- **session**: the SSH session channel with its PTY (``_session.Session``), which reads
  keystrokes (``_input``, ``_keyreader``) and is the only writer to the channel
  (``_channel``). It shows one
- **screen**: the prompt-toolkit chat screen of a session (``_screen.ChatScreen``):
  layout and keys; slash commands (``_commands``); the transcript, paging and scrolling
  (``_scrollback``, drawn by ``_view``/``_markdown``/``_paint``); the status line
  (``_statusline``); when streamed text is committed (``_throttle``, ``_pace``). A
  screen shows one
- **conversation**: the turns of one chat and its one answer in flight
  (``_conversation.Conversation``), shared by all screens of its account: the hub
  (``_hub``) keeps each open conversation as a ``LiveConversation`` with its recorder
  (``_recorder`` into ``_store``) and its count of screens. A conversation is made of
- **turns**: one question and its answer (``_conversation.Turn``), streamed from a
- **provider**: one upstream model API (``_provider`` protocol; ``_gemini``, through the
  sans-I/O ``_sse`` decoder, with ``_retry`` before the first token), held to the
  limits of whoever holds the login's key (``_quota``).

Past one process (PostgreSQL store, ``_pg_store``): a **worker** is one server process
(``_workers`` forks them on one port; ``_front`` takes the client's address from a PROXY
header); each answer has one **owner**, the worker that asked upstream and writes it;
screens elsewhere **follow** it through the store's notifications (``_follow``). The
per-holder limits every worker shares are rows in the database (``_shared_limits``), as
are invites and the keys they register (``_shared_accounts``).

Where things go: a keystroke goes ``_session`` -> ``_input`` -> ``_keyreader`` ->
``_screen`` (a key binding or ``_commands``) -> ``Conversation.ask``; an SSE byte goes
``_gemini`` -> ``_sse`` -> a ``_provider`` event -> ``Conversation`` (turn text) ->
``_recorder`` (the store) and each screen's ``_throttle`` -> ``_scrollback``/``_view``
-> ``_paint`` -> ``_channel`` -> the terminal; a stored turn goes ``_store`` -> ``_hub``
(a ``LiveConversation`` on open or resume) -> ``_scrollback``.
"""

__version__ = "0.1.0"

from ._config import Config, load_config
from ._errors import (
    ApiKeyInvalid,
    ApiKeyMissing,
    BadRequest,
    BudgetExceeded,
    ConfigError,
    ConversationNotFound,
    InputRejected,
    KindleSSHError,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    ServerBusy,
    StoreError,
    StreamProtocolError,
    TruncatedStream,
    UpstreamError,
    UpstreamUnavailable,
    UserError,
)
from ._provider import (
    ChatRequest,
    Finish,
    Message,
    Provider,
    StreamEvent,
    TextDelta,
    ThoughtDelta,
    Usage,
)
from ._server import Server, start_server

__all__ = [
    "ApiKeyInvalid",
    "ApiKeyMissing",
    "BadRequest",
    "BudgetExceeded",
    "ChatRequest",
    "Config",
    "ConfigError",
    "ConversationNotFound",
    "Finish",
    "InputRejected",
    "KindleSSHError",
    "Message",
    "ModelNotFound",
    "Provider",
    "QuotaExhausted",
    "RateLimited",
    "Server",
    "ServerBusy",
    "StoreError",
    "StreamEvent",
    "StreamProtocolError",
    "TextDelta",
    "ThoughtDelta",
    "TruncatedStream",
    "UpstreamError",
    "UpstreamUnavailable",
    "Usage",
    "UserError",
    "__version__",
    "load_config",
    "start_server",
]
