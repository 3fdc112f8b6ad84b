"""Invites and the keys they enrol, shared through PostgreSQL by two servers: a code made
by ``kindlessh invite`` works once across both, the key it enrolled logs in on the other,
and a revoke or an expiry holds on both."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import psycopg
import pytest

from kindlessh import Server
from kindlessh._cli import describe, main
from kindlessh._guesses import GuessBudget
from kindlessh._shared_accounts import SharedAccounts, create_invite
from kindlessh._users import KeyEntry

from .codetyper import try_code
from .conftest import ServerFactory
from .helpers import until


async def _cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    """``kindlessh ARGS --config`` the servers' file (which holds ``[storage] url``)."""
    capsys.readouterr()
    status = await asyncio.to_thread(
        main, [*args, "--config", str(tmp_path / "kindlessh.toml")]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


async def _two(make_server: ServerFactory, pg_url: str, tmp_path: Path) -> list[Server]:
    """Two servers on one database, each with users_dir of its own (two machines)."""
    return [
        await make_server(
            storage={"url": pg_url}, server={"users_dir": str(tmp_path / m / "users")}
        )
        for m in ("a", "b")
    ]


def _accounts(server: Server) -> SharedAccounts:
    assert isinstance(server.ctx.invites, SharedAccounts)
    return server.ctx.invites


def _entry(key: asyncssh.SSHKey) -> KeyEntry:
    return KeyEntry.parse(key.export_public_key().decode(), "test")


async def _key_login(server: Server, name: str, key: asyncssh.SSHKey) -> BaseException | None:
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", server.port, username=name, client_keys=[key], known_hosts=None,
            agent_path=None, password=None, kbdint_auth=False, preferred_auth="publickey",
        )
    except (asyncssh.Error, OSError) as exc:
        return exc
    conn.close()
    await conn.wait_closed()
    return None


async def test_a_code_redeemed_on_one_machine_is_refused_on_the_other_and_the_key_works_on_both(
    pg_url: str, make_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = await _two(make_server, pg_url, tmp_path)
    now = datetime.now(UTC)
    assert _accounts(a).pending("kindle", now) is None
    # Made after both servers started: each hears of it (NOTIFY), with no restart.
    code = (await _cli(capsys, tmp_path, "invite", "kindle", "--profile", "eink",
                       "--quiet")).strip()  # fmt: skip
    for server in (a, b):
        await until(lambda s=server: _accounts(s).pending("kindle", now) is not None)
    assert "kindle: expires in 15 minutes, profile eink" in await _cli(
        capsys, tmp_path, "invite", "--list"
    )

    key = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(a, "kindle", [key], [code])
    assert error is None
    assert typer.prompts == ["Invite code for kindle: "]

    # The same code on the other machine: consumed in the database, whatever B's mirror
    # holds at this instant...
    other = asyncssh.generate_private_key("ssh-ed25519")
    outcome = await _accounts(b).redeem_key(
        "kindle", code, datetime.now(UTC), _entry(other), GuessBudget(100.0)
    )
    assert outcome == ("gone", None)
    # ...and once B heard of it, not even asked for.
    await until(lambda: _accounts(b).pending("kindle", datetime.now(UTC)) is None)
    typer, error = await try_code(b, "kindle", [other], [code])
    assert isinstance(error, asyncssh.PermissionDenied)
    assert typer.prompts == []

    # The enrolled key logs in on B by itself; no file was written on either machine.
    await until(lambda: _accounts(b).keys("kindle") is not None)
    assert await _key_login(b, "kindle", key) is None
    assert await _key_login(a, "kindle", key) is None
    assert isinstance(await _key_login(b, "kindle", other), asyncssh.PermissionDenied)
    assert not (tmp_path / "a" / "users" / "kindle").exists()
    assert not (tmp_path / "b" / "users" / "kindle").exists()
    (line,) = _accounts(b).lines("kindle")
    assert line.startswith('environment="KINDLESSH_PROFILE=eink" ssh-ed25519 ')
    assert "No invites are pending." in await _cli(capsys, tmp_path, "invite", "--list")
    assert "Users with keys registered by invite, in the database: 1" in describe(b)

    listed = await _cli(capsys, tmp_path, "user", "list")
    assert "kindle: 1 key(s), profile eink" in listed
    assert "(enrolled by invite, in the database)" in listed
    # Its screen profile changes on every machine too.
    assert "kindle: profile smooth on 1 key(s)" in await _cli(
        capsys, tmp_path, "user", "set", "kindle", "--profile", "smooth"
    )
    await until(lambda: _accounts(a).lines("kindle") != [line])
    (changed,) = _accounts(a).lines("kindle")
    assert changed.startswith('environment="KINDLESSH_PROFILE=smooth" ssh-ed25519 ')
    assert "kindle: 1 key(s), profile smooth" in await _cli(capsys, tmp_path, "user", "list")
    assert "kindle: removed, with 1 key(s)" in await _cli(
        capsys, tmp_path, "user", "remove", "kindle"
    )
    await until(lambda: _accounts(a).keys("kindle") is None)
    assert isinstance(await _key_login(a, "kindle", key), asyncssh.PermissionDenied)


async def test_an_enrolled_key_joins_the_keys_of_a_user_with_a_file(
    pg_url: str, make_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = await _two(make_server, pg_url, tmp_path)
    laptop = asyncssh.generate_private_key("ssh-ed25519")
    for m in ("a", "b"):  # the owner copies the users' files to every machine
        users = tmp_path / m / "users"
        users.mkdir(parents=True, mode=0o700)
        (users / "ann").write_text(laptop.export_public_key().decode())
        (users / "ann").chmod(0o600)
    code = (await _cli(capsys, tmp_path, "invite", "ann", "--quiet")).strip()
    await until(lambda: _accounts(b).pending("ann", datetime.now(UTC)) is not None)
    kindle = asyncssh.generate_private_key("ssh-ed25519")
    _, error = await try_code(b, "ann", [kindle], [code])
    assert error is None
    await until(lambda: _accounts(a).keys("ann") is not None)
    for server in (a, b):
        assert await _key_login(server, "ann", laptop) is None
        assert await _key_login(server, "ann", kindle) is None
    # The file was left as the owner wrote it.
    assert (tmp_path / "a" / "users" / "ann").read_text().count("ssh-ed25519") == 1


async def test_revoke_and_expiry_hold_on_both_machines(
    pg_url: str, make_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = await _two(make_server, pg_url, tmp_path)
    code = (await _cli(capsys, tmp_path, "invite", "kindle", "--quiet")).strip()
    for server in (a, b):
        await until(lambda s=server: _accounts(s).pending("kindle", datetime.now(UTC)))
    assert "kindle: invite revoked" in await _cli(
        capsys, tmp_path, "invite", "--revoke", "kindle"
    )
    key = asyncssh.generate_private_key("ssh-ed25519")
    for server in (a, b):
        await until(lambda s=server: _accounts(s).pending("kindle", datetime.now(UTC)) is None)
        typer, error = await try_code(server, "kindle", [key], [code])
        assert isinstance(error, asyncssh.PermissionDenied)
        assert typer.prompts == []  # no invite pending anywhere: no keyboard at all

    # An invite that expired an hour ago, then a live one for another name: once both
    # servers hear the second, they have heard the first (notices arrive in order).
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        old, _ = await create_invite(conn, "old", profile=None, ttl=timedelta(minutes=15),
                                     now=now - timedelta(hours=1))  # fmt: skip
        await create_invite(conn, "marker", profile=None, ttl=timedelta(minutes=15), now=now)
    for server in (a, b):
        await until(lambda s=server: _accounts(s).pending("marker", datetime.now(UTC)))
        assert _accounts(server).pending("old", datetime.now(UTC)) is None
        typer, error = await try_code(server, "old", [key], [old])
        # Asked like any name while "marker" is pending, but the expired code is wrong:
        # asked again (and this client gives up).
        assert isinstance(error, asyncssh.PermissionDenied)
        assert typer.prompts == ["Invite code for old: "] * 2
        assert await _accounts(server).redeem_key(
            "old", old, datetime.now(UTC), _entry(key), GuessBudget(100.0)
        ) == ("gone", None)
        assert _accounts(server).keys("old") is None
    assert await _key_login(b, "old", key) is not None


async def test_a_server_whose_listening_connection_drops_hears_again_and_catches_up(
    pg_url: str, make_server: ServerFactory, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kindlessh._shared_accounts.RETRY_SECONDS", 0.05)
    a = await make_server(storage={"url": pg_url})
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'LISTEN kindlessh_accounts'"
        )
        assert [row[0] for row in await cursor.fetchall()] == [True]
        # Made while nobody hears: the reload after the new LISTEN finds it.
        await create_invite(conn, "kindle", profile=None, ttl=timedelta(minutes=15),
                            now=datetime.now(UTC))  # fmt: skip
    await until(lambda: _accounts(a).pending("kindle", datetime.now(UTC)) is not None)
    # And it hears again: a revoke reaches it.
    await _cli(capsys, tmp_path, "invite", "--revoke", "kindle")
    await until(lambda: _accounts(a).pending("kindle", datetime.now(UTC)) is None)


def test_invite_with_an_unreachable_database_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kindlessh.toml"
    config.write_text('[storage]\nurl = "postgresql://kindlessh:secret@127.0.0.1:1/kindlessh"\n')
    assert main(["invite", "kindle", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kindlessh: Cannot open the conversation store PostgreSQL ")
    assert "start PostgreSQL there" in err and "secret" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "keys" / "invites.json").exists()
