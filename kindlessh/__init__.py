"""kindlessh: an SSH server that gives every session a chat with Google Gemini.

The public surface is small: run the server (``start_server``), load its configuration
(``load_config``), and catch its errors (the ``KindleSSHError`` tree).
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
