"""Configuration: a TOML file, validated strictly, turned into frozen dataclasses.

Contract:
- ``load_config(path)`` reads ``path`` (or uses every default when ``path`` is None) and
  returns a :class:`Config`. Any problem raises :class:`~kindlessh._errors.ConfigError`
  whose message is one line naming the file, the key and the problem.
- Unknown sections or keys are errors (a typo must not silently fall back to a default).
- Relative paths are resolved against the directory of the config file, or against the
  current directory when there is no file.
- The environment variable ``GEMINI_API_KEY``, when set and not empty, overrides
  ``[gemini] api_key``.

Every key and its default is documented in ``config.example.toml``; a test keeps the two
in step. Each default is defined once: here, or, for the keys that configure a mechanism
with its own defaults (the retry policy), in that mechanism, which the keys here follow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._retry import RetryPolicy

log = logging.getLogger("kindlessh.config")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_SYSTEM_INSTRUCTION = (
    "You are answering in a text terminal that may be a narrow e-ink screen. "
    "Be concise, use plain Markdown, and avoid wide tables."
)
_RETRY = RetryPolicy()  # the retry defaults, as the policy defines them


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where to listen, who may log in, and the limits on connections."""

    host: str = "0.0.0.0"
    port: int = 2222
    host_key: Path = Path("keys/ssh_host_ed25519_key")
    authorized_keys: Path = Path("keys/authorized_keys")
    users_dir: Path = Path("keys/users")
    password_auth: bool = False
    login_timeout: float = 30.0
    max_auth_tries: int = 4
    max_startups: int = 10
    max_startups_rate: int = 30
    max_startups_full: int = 60
    max_startups_per_source: int = 3
    penalty_authfail: float = 5.0
    penalty_noauth: float = 1.0
    penalty_grace: float = 10.0
    penalty_min: float = 15.0
    penalty_max: float = 600.0
    penalty_exempt: str = ""
    max_sessions: int = 100
    max_sessions_per_user: int = 5
    max_connections: int = 150
    max_connections_per_user: int = 10
    unused_timeout: float = 30.0
    max_rekeys: int = 10
    max_resize_rate: float = 20.0
    max_resize_burst: int = 300
    max_names_per_source: int = 8
    password_checks_per_second: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    max_write_buffer: int = 1 << 20
    idle_timeout: float = 3600.0
    proxy_from: str = ""
    proxy_timeout: float = 5.0


@dataclass(frozen=True)
class GeminiConfig:
    """``[gemini]``: the upstream model API."""

    api_key: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    temperature: float = 1.0
    # Thinking is paid out of max_output_tokens: 8192 leaves at least 6144 tokens for
    # the answer after the default thinking budget (an ordinary answer is under 1500).
    max_output_tokens: int = 8192
    thinking_budget: int = 2048
    thinking_level: str = "low"
    google_search: bool = False
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0
    chunk_timeout: float = 30.0
    answer_timeout: float = 300.0
    max_retries: int = _RETRY.max_retries
    retry_base_delay: float = _RETRY.base_delay
    retry_jitter: float = _RETRY.jitter
    retry_budget: float = _RETRY.budget

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy these keys describe (the others keep the policy's defaults)."""
        return RetryPolicy(
            max_retries=self.max_retries,
            base_delay=self.retry_base_delay,
            jitter=self.retry_jitter,
            budget=self.retry_budget,
        )


@dataclass(frozen=True)
class ChatConfig:
    """``[chat]``: limits on what a person sends."""

    max_prompt_chars: int = 4000
    max_answer_chars: int = 32768
    finish_on_disconnect: bool = True
    system_prompt: str = DEFAULT_SYSTEM_INSTRUCTION
    default_model: str = ""  # a [models.NAME] entry; "": gemini if configured, else the first


@dataclass(frozen=True)
class ModelConfig:
    """``[models.NAME]``: one model a conversation may use.

    ``provider = "openai"`` is any OpenAI-compatible ``/chat/completions`` server;
    ``provider = "gemini"`` is Gemini with the ``[gemini]`` settings, this entry's
    ``model`` (and its key, URL and first-byte timeout when set) in their place.
    The key is read from the environment variable ``api_key_env`` names, never from the
    file.
    """

    name: str = ""  # the table's name, not a key
    provider: str = "openai"
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    api_key: str = field(default="", repr=False)  # read from api_key_env, not a key
    max_output_tokens: int = 0  # 0: the chat's ([gemini] max_output_tokens)
    connect_timeout: float = 10.0
    # A local model may load for a minute or more before its first byte.
    first_byte_timeout: float = 300.0
    chunk_timeout: float = 60.0
    answer_timeout: float = 600.0


@dataclass(frozen=True)
class QuotaConfig:
    """``[quota]``: how much of the upstream quota each user, and everyone, may use."""

    prompts: int = 3
    refill_seconds: float = 10.0
    daily_tokens: int = 100_000
    max_upstream: int = 8
    queue_timeout: float = 30.0


@dataclass(frozen=True)
class UIConfig:
    """``[ui]``: how the chat is painted."""

    profile: str = "smooth"
    eink_interval_ms: int = 1000
    smooth_interval_ms: int = 50
    eink_glyphs: str = "kindle"
    smooth_glyphs: str = "full"


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: where conversations are kept."""

    path: Path = Path("data/kindlessh.sqlite3")
    # "" keeps conversations in SQLite at ``path``; a postgresql:// URL keeps them there.
    url: str = ""
    export_dir: Path = Path("data/exports")
    commit_interval_ms: int = 1000
    # With a shared store: milliseconds a screen following another process's answer
    # waits without news before it checks that process is still alive.
    follow_check_ms: int = 1000
    # With a shared store: milliseconds a worker may be seen without its liveness lock
    # (its link to PostgreSQL cut, reconnecting) before it counts as dead: its answers
    # marked interrupted, its shared limits freed.
    owner_grace_ms: int = 3000


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from, if any."""

    server: ServerConfig = ServerConfig()
    gemini: GeminiConfig = GeminiConfig()
    chat: ChatConfig = ChatConfig()
    quota: QuotaConfig = QuotaConfig()
    ui: UIConfig = UIConfig()
    storage: StorageConfig = StorageConfig()
    source: Path | None = None
    # Every model entry, the ``gemini`` one from [gemini] included when it applies.
    models: tuple[ModelConfig, ...] = ()

    @property
    def default_model(self) -> str:
        """The entry new conversations use."""
        return self.chat.default_model or (self.models[0].name if self.models else "gemini")

    def model(self, name: str) -> ModelConfig | None:
        """The entry called ``name``, if there is one."""
        return next((m for m in self.models if m.name == name), None)


def parse_networks(text: str) -> list[IPv4Network | IPv6Network]:
    """``"10.0.0.0/8, ::1"`` as networks (a bare address is a /32 or /128).

    Raises:
        ValueError: an item is not an address or network.
    """
    return [ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()]


def _model_ok(name: str) -> bool:
    """``gemini-2.5-flash``, or as ListModels names it: ``models/gemini-2.5-flash``
    (``tunedModels/...`` too)."""
    prefix, _, rest = name.rpartition("/")
    return (
        prefix in ("", "models", "tunedModels")
        and bool(rest)
        and all(c.isalnum() or c in "-._" for c in rest)
    )


def _networks_ok(text: str) -> bool:
    try:
        parse_networks(text)
    except ValueError:
        return False
    return True


# Per-key checks beyond the type: (predicate, description of the valid range).
_RANGES: dict[tuple[str, str], tuple[Any, str]] = {
    ("server", "port"): (lambda v: 0 <= v <= 65535, "a port number from 0 to 65535"),
    ("server", "login_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("server", "max_auth_tries"): (lambda v: 1 <= v <= 100, "a count from 1 to 100"),
    ("server", "max_startups"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_startups_rate"): (lambda v: 0 <= v <= 100, "a percentage from 0 to 100"),
    ("server", "max_startups_full"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_startups_per_source"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "penalty_authfail"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("server", "penalty_noauth"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("server", "penalty_grace"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("server", "penalty_min"): (lambda v: v > 0, "a number of seconds above 0"),
    ("server", "penalty_max"): (lambda v: v > 0, "a number of seconds above 0"),
    ("server", "penalty_exempt"): (
        lambda v: _networks_ok(v),
        'addresses or networks separated by commas, such as "192.168.1.0/24, ::1"',
    ),
    ("server", "proxy_from"): (
        lambda v: _networks_ok(v),
        'addresses or networks separated by commas, such as "10.0.0.5, 10.0.1.0/24"',
    ),
    ("server", "proxy_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("server", "max_sessions"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_sessions_per_user"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_connections"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_connections_per_user"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "unused_timeout"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("server", "max_rekeys"): (lambda v: 1 <= v <= 3600, "a count from 1 to 3600"),
    ("server", "max_resize_rate"): (lambda v: v > 0, "a number above 0"),
    ("server", "max_resize_burst"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_names_per_source"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "password_checks_per_second"): (
        lambda v: 0.1 <= v <= 1000, "a number of checks from 0.1 to 1000"
    ),
    ("server", "keepalive_interval"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("server", "keepalive_count_max"): (lambda v: v >= 1, "a count of 1 or more"),
    ("server", "max_write_buffer"): (lambda v: v >= 4096, "a byte count of 4096 or more"),
    ("server", "idle_timeout"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("gemini", "temperature"): (lambda v: 0.0 <= v <= 2.0, "a number from 0.0 to 2.0"),
    ("gemini", "max_output_tokens"): (lambda v: v >= 1, "a count of 1 or more"),
    ("gemini", "base_url"): (
        lambda v: v.startswith(("http://", "https://")),
        "a URL starting with http:// or https://",
    ),
    ("gemini", "model"): (
        lambda v: _model_ok(v),
        "a model name such as gemini-2.5-flash or models/gemini-2.5-flash",
    ),
    ("gemini", "thinking_budget"): (
        lambda v: -1 <= v <= 32768, "a token count from 0 to 32768, or -1 (dynamic)"
    ),
    ("gemini", "thinking_level"): (
        lambda v: v in ("", "minimal", "low", "medium", "high"),
        '"minimal", "low", "medium", "high", or "" (the model\'s default)',
    ),
    ("gemini", "connect_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("gemini", "first_byte_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("gemini", "chunk_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("gemini", "answer_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("gemini", "max_retries"): (lambda v: 0 <= v <= 10, "a count from 0 to 10"),
    ("gemini", "retry_base_delay"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("gemini", "retry_jitter"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("gemini", "retry_budget"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("models", "provider"): (lambda v: v in ("openai", "gemini"), '"openai" or "gemini"'),
    ("models", "base_url"): (
        lambda v: v == "" or v.startswith(("http://", "https://")),
        "a URL starting with http:// or https://",
    ),
    ("models", "api_key_env"): (
        lambda v: v == "" or (v.replace("_", "a").isalnum() and not v[0].isdigit()),
        "the name of an environment variable, such as OPENROUTER_API_KEY",
    ),
    ("models", "max_output_tokens"): (lambda v: v >= 0, "a count, 0 or more"),
    ("models", "connect_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("models", "first_byte_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("models", "chunk_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("models", "answer_timeout"): (lambda v: v > 0, "a number of seconds above 0"),
    ("chat", "max_prompt_chars"): (lambda v: v >= 1, "a count of 1 or more"),
    ("chat", "max_answer_chars"): (lambda v: v >= 1000, "a count of 1000 or more"),
    ("quota", "prompts"): (lambda v: v >= 0, "a count, 0 or more"),
    ("quota", "refill_seconds"): (lambda v: v > 0, "a number of seconds above 0"),
    ("quota", "daily_tokens"): (lambda v: v >= 0, "a count, 0 or more"),
    ("quota", "max_upstream"): (lambda v: v >= 1, "a count of 1 or more"),
    ("quota", "queue_timeout"): (lambda v: v >= 0, "a number of seconds, 0 or more"),
    ("storage", "url"): (
        lambda v: v == "" or v.startswith(("postgresql://", "postgres://")),
        'empty (SQLite at [storage] path) or a "postgresql://user:password@host/db" URL',
    ),
    ("storage", "commit_interval_ms"): (
        lambda v: 50 <= v <= 60000, "milliseconds from 50 to 60000"
    ),
    ("storage", "follow_check_ms"): (
        lambda v: 10 <= v <= 60000, "milliseconds from 10 to 60000"
    ),
    ("storage", "owner_grace_ms"): (
        lambda v: 0 <= v <= 600000, "milliseconds from 0 to 600000"
    ),
    ("ui", "profile"): (lambda v: v in ("eink", "smooth"), '"eink" or "smooth"'),
    ("ui", "eink_interval_ms"): (lambda v: 250 <= v <= 5000, "milliseconds from 250 to 5000"),
    ("ui", "smooth_interval_ms"): (lambda v: 10 <= v <= 5000, "milliseconds from 10 to 5000"),
    ("ui", "eink_glyphs"): (
        lambda v: v in ("full", "kindle", "ascii"), '"full", "kindle" or "ascii"'
    ),
    ("ui", "smooth_glyphs"): (
        lambda v: v in ("full", "kindle", "ascii"), '"full", "kindle" or "ascii"'
    ),
}

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "gemini": GeminiConfig,
    "chat": ChatConfig,
    "quota": QuotaConfig,
    "ui": UIConfig,
    "storage": StorageConfig,
}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _toml_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _convert(where: str, kind: Any, value: Any, base: Path) -> Any:
    """Check ``value`` against the dataclass field type ``kind`` and convert it."""
    if kind is Path:
        if type(value) is not str or not value:
            raise ConfigError(f"{where}: expected a path string, got {_toml_type(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if kind is float:
        # TOML writes 1 and 1.0 differently; both mean the same number of seconds.
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number, got {_toml_type(value)}")
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {_toml_type(value)}")
    return value


def _section(name: str, raw: Any, cls: type[Any], origin: str, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: [{name}] must be a table, got {_toml_type(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{origin}: [{name}] {key}"
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{where}: unknown key (known keys: {known})")
        kind = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}[
            str(fields[key].type)
        ]
        converted = _convert(where, kind, value, base)
        check = _RANGES.get((name.partition(".")[0], key))
        if check is not None and not check[0](converted):
            # A URL may hold a password: it is refused without being repeated.
            shown = "the value" if key == "url" else repr(value)
            raise ConfigError(f"{where}: {shown} is out of range; expected {check[1]}")
        values[key] = converted
    # Defaults that are relative paths follow the same base as the file's values.
    for fname, f in fields.items():
        if fname in values or str(f.type) != "Path":
            continue
        default = Path(str(f.default))
        values[fname] = default if default.is_absolute() else base / default
    return cls(**values)


def _rename_system_instruction(sections: dict[str, Any], origin: str) -> None:
    """Read a config written before ``[gemini] system_instruction`` became ``[chat]
    system_prompt``: the old key still works, with a warning; both at once are refused.

    Strategy: a file that started the server yesterday must start it today; a silent
    rename would drop the owner's prompt without a word.
    """
    gemini = sections.get("gemini")
    if not isinstance(gemini, dict) or "system_instruction" not in gemini:
        return
    chat = sections.setdefault("chat", {})
    if not isinstance(chat, dict):
        return  # _section reports a [chat] that is not a table
    if "system_prompt" in chat:
        raise ConfigError(
            f"{origin}: [gemini] system_instruction: renamed [chat] system_prompt, which "
            "is set too; keep only [chat] system_prompt"
        )
    gemini = dict(gemini)
    chat = dict(chat)
    chat["system_prompt"] = gemini.pop("system_instruction")
    sections["gemini"], sections["chat"] = gemini, chat
    log.warning(
        "%s: [gemini] system_instruction is now [chat] system_prompt; it was read as that",
        origin,
    )


_ENTRY_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _model_entries(
    raw: Any, origin: str, base: Path, env: dict[str, str], file_has_gemini: bool,
    gemini: GeminiConfig,
) -> tuple[ModelConfig, ...]:
    """The ``[models.NAME]`` tables, and the ``gemini`` entry that ``[gemini]`` makes.

    Strategy: ``[gemini]`` stays the entry ``gemini`` whenever it may be meant: when
    there are no other entries (today's configs), when a Gemini key is set, or when the
    file has a ``[gemini]`` table. A server with only local models then never says it
    lacks a Gemini key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: [models] must hold tables such as [models.local]")
    entries: list[ModelConfig] = []
    for name, table in raw.items():
        if not name or not set(name) <= _ENTRY_NAME_CHARS:
            raise ConfigError(
                f"{origin}: [models.{name}]: a model entry's name is lower-case letters, "
                "digits, '-', '_' or '.'"
            )
        if isinstance(table, dict) and ("name" in table or "api_key" in table):
            key = "name" if "name" in table else "api_key"
            why = ("the table's name is the entry's name" if key == "name"
                   else "keys are read from the environment: set api_key_env")
            raise ConfigError(f"{origin}: [models.{name}] {key}: not a key here ({why})")
        entry = _section(f"models.{name}", table, ModelConfig, origin, base)
        entry = dataclasses.replace(entry, name=name)
        if entry.provider == "openai" and not entry.base_url:
            raise ConfigError(
                f"{origin}: [models.{name}] base_url: missing; an OpenAI-compatible server "
                'needs one, such as "http://127.0.0.1:11434/v1" (Ollama)'
            )
        if not entry.model:
            raise ConfigError(f"{origin}: [models.{name}] model: missing; name the model")
        key = ""
        if entry.api_key_env:
            key = env.get(entry.api_key_env, "").strip()
        elif entry.provider == "gemini":
            key = gemini.api_key
        entries.append(dataclasses.replace(entry, api_key=key))
    if "gemini" not in raw and (not entries or gemini.api_key or file_has_gemini):
        entries.insert(0, ModelConfig(
            name="gemini",
            provider="gemini",
            base_url=gemini.base_url,
            model=gemini.model.removeprefix("models/"),
            api_key_env="GEMINI_API_KEY",
            api_key=gemini.api_key,
            max_output_tokens=gemini.max_output_tokens,
            connect_timeout=gemini.connect_timeout,
            first_byte_timeout=gemini.first_byte_timeout,
            chunk_timeout=gemini.chunk_timeout,
            answer_timeout=gemini.answer_timeout,
        ))
    return tuple(entries)


def gemini_for(entry: ModelConfig, gemini: GeminiConfig) -> GeminiConfig:
    """The ``[gemini]`` settings with a ``provider = "gemini"`` entry's own values."""
    return dataclasses.replace(
        gemini,
        model=entry.model,
        base_url=entry.base_url or gemini.base_url,
        api_key=entry.api_key,
        first_byte_timeout=entry.first_byte_timeout,
        connect_timeout=entry.connect_timeout,
        chunk_timeout=entry.chunk_timeout,
        answer_timeout=entry.answer_timeout,
        max_output_tokens=entry.max_output_tokens or gemini.max_output_tokens,
    )


def load_config(path: Path | None, env: dict[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    Args:
        path: the TOML file, or None for all defaults (paths relative to the current
            directory).
        env: the environment to read ``GEMINI_API_KEY`` from (default ``os.environ``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file cannot be read or parsed, or a key is unknown, of the wrong
            type or out of range. The message names the file and the key.
    """
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    if path is None:
        origin, base = "defaults", Path.cwd()
    else:
        origin, base = str(path), path.resolve().parent
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{origin}: the config file does not exist") from None
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read the config file ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: not valid UTF-8 text") from None
    sections: dict[str, Any] = {}
    models_raw = raw.pop("models", {})
    for name, value in raw.items():
        if name not in _SECTIONS:
            known = ", ".join(f"[{s}]" for s in [*_SECTIONS, "models.NAME"])
            raise ConfigError(f"{origin}: [{name}]: unknown section (known sections: {known})")
        sections[name] = value
    _rename_system_instruction(sections, origin)
    built = {
        name: _section(name, sections.get(name, {}), cls, origin, base)
        for name, cls in _SECTIONS.items()
    }
    srv = built["server"]
    for low, high in (
        ("max_startups", "max_startups_full"),
        ("penalty_min", "penalty_max"),
    ):
        if getattr(srv, low) > getattr(srv, high):
            raise ConfigError(
                f"{origin}: [server] {low} ({getattr(srv, low)}) is above {high} "
                f"({getattr(srv, high)}); expected at most {high}"
            )
    gem = built["gemini"]
    if gem.thinking_budget >= gem.max_output_tokens:
        raise ConfigError(
            f"{origin}: [gemini] thinking_budget ({gem.thinking_budget}) leaves no room for "
            f"the answer within max_output_tokens ({gem.max_output_tokens}); expected less"
        )
    key = env.get("GEMINI_API_KEY", "").strip()
    if key:
        built["gemini"] = dataclasses.replace(built["gemini"], api_key=key)
    models = _model_entries(models_raw, origin, base, env, "gemini" in raw, built["gemini"])
    config = Config(**built, source=path, models=models)
    if config.chat.default_model and config.model(config.chat.default_model) is None:
        names = ", ".join(m.name for m in models) or "none"
        raise ConfigError(
            f"{origin}: [chat] default_model: {config.chat.default_model!r} is not a "
            f"configured model (configured: {names})"
        )
    return config
