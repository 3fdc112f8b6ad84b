"""``kindlessh user ...``: per-user key files, and the running server following them."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._cli import describe, main
from kindlessh._errors import UserError
from kindlessh._users import Users, check_name, parse_keys

from .conftest import ServerFactory
from .helpers import connected

KW = {"known_hosts": None, "agent_path": None}


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    # These tests fail logins on purpose, more than a penalty allows; loopback is exempt.
    return await make_server(server={"penalty_exempt": "127.0.0.1"})


async def subprocess_cli(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``python -m kindlessh user ARGS --config CONFIG`` as a person would."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kindlessh", "user", *args, "--config", str(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 20)
    return proc.returncode or 0, out.decode(), err.decode()


async def cli(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The same command in this process (a subprocess costs half a second of imports)."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = main(["user", *args, "--config", str(config)])
    finally:
        sys.stdin, sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


async def can_log_in(server: Server, key: asyncssh.SSHKey, user: str) -> bool:
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", server.port, username=user, client_keys=[key], **KW
        )
    except asyncssh.PermissionDenied:
        return False
    conn.close()
    await conn.wait_closed()
    return True


def _config(server: Server) -> Path:
    assert server.ctx.config.source is not None
    return server.ctx.config.source


async def test_a_user_added_while_the_server_runs_logs_in_with_their_key_only(
    server: Server, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    alice = asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")
    pub = tmp_path / "alice.pub"
    alice.write_public_key(str(pub))
    assert not await can_log_in(server, alice, "alice")

    code, out, err = await subprocess_cli(_config(server), "add", "alice", "--key", str(pub))
    assert (code, err) == (0, "")
    assert alice.get_fingerprint("sha256") in out and "alice@laptop" in out
    path = server.ctx.config.server.users_dir / "alice"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700

    assert await can_log_in(server, alice, "alice")  # no restart
    assert not await can_log_in(server, alice, "bob")  # alice's key is hers alone
    # The shared authorized_keys file still serves every other name, but not alice's.
    assert await can_log_in(server, client_key, "bob")
    assert not await can_log_in(server, client_key, "alice")

    code, out, _ = await cli(_config(server), "remove", "alice")
    assert code == 0 and "removed" in out
    assert not await can_log_in(server, alice, "alice")
    assert await can_log_in(server, client_key, "alice")  # the name is free again


async def test_profile_from_stdin_options_and_user_set(
    server: Server, tmp_path: Path
) -> None:
    kindle = asyncssh.generate_private_key("ssh-ed25519", comment="kindle")
    laptop = asyncssh.generate_private_key("ssh-ed25519", comment="laptop")
    line = 'from="127.0.0.1,::1" ' + kindle.export_public_key().decode()
    code, _, err = await cli(_config(server), "add", "kim", "--key", "-", stdin=line)
    assert (code, err) == (0, "")
    code, _, _ = await cli(
        _config(server), "add", "kim", "--key", "-", "--profile", "smooth",
        stdin=laptop.export_public_key().decode(),
    )
    assert code == 0
    code, out, _ = await cli(_config(server), "list")
    assert "kim: 2 key(s), profile mixed" in out
    assert kindle.get_fingerprint("sha256") in out and laptop.get_fingerprint("sha256") in out

    code, out, _ = await cli(_config(server), "set", "kim", "--profile", "eink")
    assert code == 0 and "profile eink on 2 key(s)" in out
    text = (server.ctx.config.server.users_dir / "kim").read_text()
    assert text.count('environment="KINDLESSH_PROFILE=eink"') == 2
    assert 'from="127.0.0.1,::1"' in text  # other options are kept
    async with connected(server, kindle, username="kim") as term:
        await term.send("/help\r")
        await term.wait_for("Screen: eink (from the key's environment= option)")


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (("add", "Alice", "--key", "-"), "", "'Alice' cannot be a user name"),
        (("add", "../etc", "--key", "-"), "", "cannot be a user name"),
        (("add", "bob", "--key", "-"), "not a key\n", "not an OpenSSH public key line"),
        (("add", "bob", "--key", "-"),
         "-----BEGIN OPENSSH PRIVATE KEY-----\n", "that is a private key"),
        (("add", "bob", "--key", "/nonexistent.pub"), "", "cannot read it"),
        (("remove", "nobody"), "", "there is no user 'nobody'"),
        (("set", "nobody", "--profile", "eink"), "", "there is no user 'nobody'"),
    ],
)
async def test_refusals_are_one_line(
    server: Server, args: tuple[str, ...], stdin: str, words: str
) -> None:
    code, out, err = await cli(_config(server), *args, stdin=stdin)
    assert code == 1
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (server.ctx.config.server.users_dir / "bob").exists()


@pytest.mark.parametrize(
    "name", ["a", "reader", "k.indle_2-b", "x" * 32, "9lives", "_svc"]
)
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 33, ".hidden", "-rf", "Alice", "a/b", "..", "a b", "\x1b[2J", "é", "a\n"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(UserError, match="cannot be a user name"):
        check_name(name)


def test_options_with_quoted_commas_and_blanks_survive_a_rewrite(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    line = f'command="echo a, b",environment="KINDLESSH_PROFILE=smooth",no-pty {key} me'
    users = Users(tmp_path / "users")
    users.add("ann", parse_keys(line, "test"))
    users.set_profile("ann", "eink")
    (entry,) = users.info("ann").keys
    assert entry.options == (
        'command="echo a, b"', "no-pty", 'environment="KINDLESSH_PROFILE=eink"'
    )
    assert entry.profile == "eink" and entry.comment == "me"
    asyncssh.import_authorized_keys((tmp_path / "users" / "ann").read_text())


async def test_a_key_file_others_may_write_is_not_trusted(
    server: Server, tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    users = Users(server.ctx.config.server.users_dir)
    users.add("ann", parse_keys(key.export_public_key().decode(), "test"))
    assert await can_log_in(server, key, "ann")
    path = users.path("ann")
    os.chmod(path, 0o664)
    assert not await can_log_in(server, key, "ann")
    assert "chmod 600" in (server.ctx.keys.users.authorized("ann").error or "")  # type: ignore[union-attr]
    os.chmod(path, 0o600)
    assert await can_log_in(server, key, "ann")


async def test_the_start_up_lines_count_the_users(server: Server) -> None:
    server.ctx.keys.authorized.path.unlink()
    assert any("No keys are authorized yet" in line for line in describe(server))
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    for name in ("ann", "bo"):
        Users(server.ctx.config.server.users_dir).add(name, parse_keys(key, "test"))
    lines = describe(server)
    assert f"Users: 2 in {server.ctx.config.server.users_dir} (ann, bo)" in lines
    assert not any("No keys are authorized yet" in line for line in lines)
