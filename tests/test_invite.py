"""Pairing a device with a one-time invite code: OpenSSH and Dropbear typing the code
through a pty, then logging in with the key alone; and every way it must fail."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._invites import Invites

from .codetyper import CodeTyper, try_code
from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import FakeClock, connected, until
from .ptyclient import PtyClient, need_binary

FAST = {"ui": {"eink_interval_ms": 250, "smooth_interval_ms": 20}}


def _invites(tmp_path: Path) -> Invites:
    return Invites.beside(tmp_path / "keys" / "users")


def _invite_cli(tmp_path: Path, *args: str) -> str:
    """``kindlessh invite`` as the owner runs it, next to the running server."""
    result = subprocess.run(
        [sys.executable, "-m", "kindlessh", "invite", *args,
         "--config", str(tmp_path / "kindlessh.toml")],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout


def _user_file(tmp_path: Path, name: str) -> Path:
    return tmp_path / "keys" / "users" / name




@pytest.mark.slow
async def test_invite_with_openssh_then_the_key_alone(
    make_server: ServerFactory, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    ssh = need_binary("ssh", "openssh-client")
    server = await make_server(**FAST)
    code = _invite_cli(tmp_path, "kindle", "--profile", "eink", "--quiet").strip()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    base = [ssh, "-t", "-p", str(server.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
    term = PtyClient([*base, "kindle@127.0.0.1"], cols=54, rows=20)
    try:
        await term.wait_for("Invite code for kindle:")
        await term.send(code.encode() + b"\r")
        await term.wait_for("/help")
        await term.wait_for("is now registered for kindle")
        await term.send(b"/help\r")
        await term.wait_for("Screen: eink")  # the invite's profile, from the first login
        await term.send(b"/quit\r")
        assert await term.wait_exit() == 0
    finally:
        term.close()
    public = key.with_suffix(".pub").read_text().split()[1]
    stored = _user_file(tmp_path, "kindle").read_text()
    assert public in stored and 'environment="KINDLESSH_PROFILE=eink"' in stored
    assert _invite_cli(tmp_path, "--list").strip() == "No invites are pending."

    # Next time: the key alone (BatchMode forbids any prompt), straight into the chat.
    fake_gemini.enqueue(Reply.text(["Welcome back."]))
    term = PtyClient([*base, "-o", "BatchMode=yes", "kindle@127.0.0.1"], cols=54, rows=20)
    try:
        await term.wait_for("/help")
        assert "registered" not in term.text()
        await term.send(b"hello\r")
        await term.wait_for("Welcome back.")
    finally:
        term.close()


@pytest.mark.slow
async def test_invite_with_dropbear_typing_the_code(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    dbclient = need_binary("dbclient", "dropbear-bin")
    dropbearkey = need_binary("dropbearkey", "dropbear-bin")
    server = await make_server(**FAST)
    code = _invite_cli(tmp_path, "paperwhite", "--quiet").strip()
    key = tmp_path / "id_dropbear"
    subprocess.run([dropbearkey, "-t", "ed25519", "-f", str(key)], check=True,
                   capture_output=True)
    argv = [dbclient, "-t", "-y", "-y", "-i", str(key), "-p", str(server.port),
            "paperwhite@127.0.0.1"]
    term = PtyClient(argv, cols=54, rows=20)
    try:
        await term.wait_for("Invite code for paperwhite:")
        # dbclient prints the instruction and the prompt as they come: each on its line.
        assert any(row.startswith("Invite code for paperwhite:") for row in term.screen.display)
        # Typed as on a Kindle keyboard: spaced out, some capitals.
        typed = f"{code[:3].upper()} {code[3:6]} {code[6:]}"
        await term.send(typed.encode() + b"\r")
        await term.wait_for("is now registered for paperwhite")
        assert "keys;" not in term.joined()  # one key offered, whatever dbclient repeats
        await term.send(b"/quit\r")
        assert await term.wait_exit() == 0
    finally:
        term.close()
    term = PtyClient(argv, cols=54, rows=20)
    try:
        await term.wait_for("/help")
        assert "Invite code" not in term.text()
    finally:
        term.close()


async def test_a_wrong_code_three_times_disconnects_and_keeps_the_invite(
    server: Server, tmp_path: Path
) -> None:
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    key = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(server, "kindle", [key], ["aaaaaaaaa"] * 5)
    assert error is not None
    assert typer.prompts == ["Invite code for kindle: "] * 3
    assert not _user_file(tmp_path, "kindle").exists()
    assert _invites(tmp_path).pending("kindle", datetime.now(UTC)) is not None
    # The right code still works on a new connection (if the source is not penalised).
    typer, error = await try_code(server, "kindle", [key], [code])
    assert error is None


async def test_an_expired_code_does_nothing(server: Server, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=15),
                                        now=past)
    key = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(server, "kindle", [key], [code])
    assert isinstance(error, asyncssh.PermissionDenied)
    assert typer.prompts == []  # no pending invite: no keyboard-interactive at all


async def test_a_code_works_once(server: Server, tmp_path: Path) -> None:
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    first = asyncssh.generate_private_key("ssh-ed25519")
    second = asyncssh.generate_private_key("ssh-ed25519")
    _, error = await try_code(server, "kindle", [first], [code])
    assert error is None
    typer, error = await try_code(server, "kindle", [second], [code])
    assert isinstance(error, asyncssh.PermissionDenied)
    assert typer.prompts == []
    stored = _user_file(tmp_path, "kindle").read_text()
    assert first.export_public_key().decode().split()[1] in stored
    assert second.export_public_key().decode().split()[1] not in stored


async def test_a_revoked_invite_does_nothing(server: Server, tmp_path: Path) -> None:
    code = _invite_cli(tmp_path, "kindle", "--quiet").strip()
    assert "kindle: invite revoked" in _invite_cli(tmp_path, "--revoke", "kindle")
    key = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(server, "kindle", [key], [code])
    assert isinstance(error, asyncssh.PermissionDenied)
    assert typer.prompts == []


async def test_a_client_with_no_key_is_told_how_to_make_one(
    server: Server, tmp_path: Path
) -> None:
    _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                              now=datetime.now(UTC))
    typer, error = await try_code(server, "kindle", [], ["whatever"])
    assert error is not None
    (instructions,) = typer.instructions
    assert "dropbearkey -t ed25519 -f ~/.ssh/id_dropbear" in instructions
    assert "ssh-keygen -t ed25519" in instructions
    assert typer.prompts == []


async def test_several_keys_offered_only_the_first_is_registered(
    server: Server, tmp_path: Path
) -> None:
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(2)]
    _, error = await try_code(server, "kindle", keys, [code])
    assert error is None
    stored = _user_file(tmp_path, "kindle").read_text()
    assert keys[0].export_public_key().decode().split()[1] in stored
    assert keys[1].export_public_key().decode().split()[1] not in stored
    async with connected(server, keys[0], username="kindle"):
        pass


@pytest.mark.parametrize("args", [["Bad Name"], ["kindle", "--ttl", "9d"], []])
def test_bad_invite_commands_say_why(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kindlessh", "invite", *args], cwd=tmp_path,
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("kindlessh: ")


def test_invite_prints_the_code_and_the_command(tmp_path: Path) -> None:
    (tmp_path / "kindlessh.toml").write_text('[server]\nport = 2222\nhost = "192.168.1.20"\n')
    out = _invite_cli(tmp_path, "kindle", "--profile", "eink")
    assert "ssh -t -p 2222 kindle@192.168.1.20" in out
    code = next(line for line in out.splitlines() if line.startswith("Code: "))[6:]
    assert len(code) == 9
    assert _invites(tmp_path).redeem("kindle", code, datetime.now(UTC))[0] == "ok"



async def test_wrong_codes_count_toward_the_source_penalty(
    server: Server, tmp_path: Path
) -> None:
    clock = FakeClock()
    server.ctx.guard.clock = clock
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    key = asyncssh.generate_private_key("ssh-ed25519")
    for _ in range(3):  # three connections guessing: 3 x 5 s reaches the 15 s that refuse
        _, error = await try_code(server, "kindle", [key], ["aaaaaaaaa"] * 3)
        assert error is not None
        await until(lambda: server.ctx.guard.logging_in == 0)
    assert server.ctx.guard.refused_for("127.0.0.1") == 15
    typer, error = await try_code(server, "kindle", [key], [code])  # even the right code
    assert error is not None and typer.prompts == []


async def test_an_enrolment_is_logged_with_name_fingerprint_and_address(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    key = asyncssh.generate_private_key("ssh-ed25519")
    with caplog.at_level("INFO", logger="kindlessh.server"):
        _, error = await try_code(server, "kindle", [key], [code])
    assert error is None
    assert f"registered key {key.get_fingerprint()} for kindle from 127.0.0.1" in caplog.text


async def test_a_new_server_with_only_an_invite_does_not_say_nobody_can_log_in(
    server: Server, tmp_path: Path
) -> None:
    server.ctx.keys.authorized.path.write_text("")  # a fresh server: no keys at all
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))
    # While an invite is pending nobody is told that no key is authorized: the banner,
    # like the methods offered, must not tell which name has the invite.
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(server, "stranger", [stranger], [])
    assert error is not None
    assert typer.banners == []
    typer, error = await try_code(server, "kindle", [asyncssh.generate_private_key("ssh-ed25519")],
                              [code])
    assert error is None
    assert typer.banners == []
    # With no invite left (and no key at all) the explanation is back.
    Path(tmp_path / "keys" / "users" / "kindle").unlink()
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    typer, error = await try_code(server, "stranger", [stranger], [])
    assert error is not None
    assert typer.banners and "no keys are authorized" in typer.banners[0]


async def test_an_invite_revoked_during_the_login_is_refused_plainly(
    server: Server, tmp_path: Path
) -> None:
    code, _ = _invites(tmp_path).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                        now=datetime.now(UTC))

    class _Revoking(CodeTyper):
        def kbdint_auth_requested(self) -> str:
            _invites(tmp_path).revoke("kindle")  # the owner, just as the code is asked
            return ""

    typer = _Revoking([code])
    with pytest.raises(asyncssh.Error):
        await asyncssh.connect(
            "127.0.0.1", server.port, username="kindle",
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")], known_hosts=None,
            agent_path=None, password=None, kbdint_auth=True, client_factory=lambda: typer,
            preferred_auth="publickey,keyboard-interactive",
        )
    assert typer.prompts == []
    assert "has expired or was cancelled" in typer.instructions[0]
    assert not _user_file(tmp_path, "kindle").exists()
