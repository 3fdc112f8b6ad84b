"""Shared fixtures: a fake Gemini on loopback, the real server on 127.0.0.1:0, a client key,
and the store's backends (a fresh PostgreSQL database per test that asks for one)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncssh
import psycopg
import pytest

from kindlessh import Server, load_config, start_server
from kindlessh._config import StorageConfig
from kindlessh._process import tune_process

from .fake_gemini import FakeGemini
from .helpers import CLIENT_KEY, connected
from .sshterm import Terminal

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real key or the internet."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
def _tuned_process() -> None:
    """Tuned as ``kindlessh serve`` tunes it: tests count the writes and bytes painted."""
    tune_process()


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    """The key every test server authorizes, and ``helpers.connected`` logs in with."""
    return CLIENT_KEY


@pytest.fixture(scope="session")
def rsa_host_key() -> bytes:
    """One RSA 3072 host key for every test server (making one takes up to 0.3 s)."""
    return asyncssh.generate_private_key("ssh-rsa", key_size=3072).export_private_key()


# The PostgreSQL server the store tests use (.ci/postgres starts it); the role may create
# databases. Each test gets a database of its own, dropped after it.
TEST_POSTGRES = os.environ.get(
    "KINDLESSH_TEST_POSTGRES", "postgresql://kindlessh:kindlessh@127.0.0.1:5432/kindlessh"
)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database; skipped when the server cannot be
    reached (under CI=true, failed: CI installs it)."""
    try:
        admin = psycopg.connect(TEST_POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at KINDLESSH_TEST_POSTGRES: {exc}".splitlines()[0]
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (run .ci/postgres)")
        pytest.skip(reason + " (run .ci/postgres)")
    name = f"kt_{uuid.uuid4().hex}"
    with admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0")
        try:
            yield _with_database(TEST_POSTGRES, name)
        finally:
            _drop(admin, name)


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    """Drop a test database. Strategy: a plain DROP first: it stops an autovacuum worker
    in the database by itself, which WITH (FORCE) may not (a superuser's process); FORCE
    only for connections a test left open."""
    for _ in range(20):
        try:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.05)
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageConfig:
    """``[storage]`` for each backend in turn: SQLite in tmp_path, then PostgreSQL."""
    path = tmp_path / "data" / "kindlessh.sqlite3"
    if request.param == "sqlite":
        return StorageConfig(path=path)
    return StorageConfig(path=path, url=request.getfixturevalue("pg_url"))


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as fg:
        yield fg


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(
    tmp_path: Path, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, rsa_host_key: bytes
) -> AsyncIterator[ServerFactory]:
    """Start the real server with a config file; keyword sections override defaults."""
    servers: list[Server] = []

    async def make(**overrides: dict[str, Any]) -> Server:
        rsa_path = tmp_path / "host_key_rsa"
        if not rsa_path.exists():
            rsa_path.write_bytes(rsa_host_key)
            rsa_path.chmod(0o600)
        auth = tmp_path / "authorized_keys"
        auth.write_text(client_key.export_public_key().decode())
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "host_key": str(tmp_path / "host_key"),
                "authorized_keys": str(auth),
            },
            "gemini": {
                "api_key": "test-key",
                "base_url": fake_gemini.base_url,
                "connect_timeout": 2.0,
                "first_byte_timeout": 5.0,
                "chunk_timeout": 5.0,
                "answer_timeout": 20.0,
                "retry_base_delay": 0.01,
                "retry_jitter": 0.0,
            },
            "ui": {"smooth_interval_ms": 20},
            # Tests ask quickly; tests/test_quota.py shrinks the limits it tests.
            "quota": {"prompts": 1000},
        }
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        sections["gemini"] = {k: v for k, v in sections["gemini"].items() if v is not None}
        config = load_config(write_config(tmp_path / "kindlessh.toml", sections))
        server = await start_server(config)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def term(server: Server) -> AsyncIterator[Terminal]:
    """A terminal with the chat up on the default server."""
    async with connected(server) as t:
        yield t
