"""Optional password logins: off by default, hashes only, for named users only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from kindlessh._errors import UserError
from kindlessh._passwords import Passwords, hash_password, verify_password

from .conftest import ServerFactory
from .helpers import connected

SECRET = "correct horse battery"


def test_only_a_salted_hash_is_stored(tmp_path: Path) -> None:
    passwords = Passwords(tmp_path / "keys" / "users")
    passwords.set("anna", SECRET)
    path = tmp_path / "keys" / "passwords" / "anna"
    stored = path.read_text()
    assert SECRET not in stored and stored.startswith("scrypt$16384$8$1$")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert hash_password(SECRET) != hash_password(SECRET)  # salted
    assert passwords.check("anna", SECRET)
    assert not passwords.check("anna", SECRET + "!")
    assert not passwords.check("bob", SECRET)


def test_short_passwords_and_bad_names_are_refused(tmp_path: Path) -> None:
    passwords = Passwords(tmp_path / "users")
    with pytest.raises(UserError, match="at least 10"):
        passwords.set("anna", "short")
    with pytest.raises(UserError):
        passwords.set("../etc", SECRET)


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    passwords = Passwords(tmp_path / "users")
    passwords.set("anna", SECRET)
    (tmp_path / "passwords" / "anna").chmod(0o666)
    assert not passwords.check("anna", SECRET)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$1$2$3$@@$@@", "md5$x$y$z$a$b"])
def test_malformed_hashes_never_match(stored: str) -> None:
    assert not verify_password("anything", stored)


def _passwd(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kindlessh", "user", "passwd", *args,
         "--config", str(tmp_path / "kindlessh.toml")],
        input=stdin, capture_output=True, text=True, timeout=30,
    )


async def _login(port: int, name: str, password: str) -> BaseException | None:
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", port, username=name, password=password, client_keys=None,
            known_hosts=None, agent_path=None, preferred_auth="password",
        )
    except (asyncssh.Error, OSError) as exc:
        return exc
    conn.close()
    await conn.wait_closed()
    return None


async def test_password_login_when_turned_on(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server(server={"password_auth": True})
    result = _passwd(tmp_path, "anna", stdin=SECRET + "\n")
    assert result.returncode == 0, result.stderr
    assert "password set" in result.stdout
    assert await _login(server.port, "anna", SECRET) is None
    async with connected(server, None, username="anna", password=SECRET, ready="Hello anna."):
        pass
    wrong = await _login(server.port, "anna", "wrong password")
    assert isinstance(wrong, asyncssh.PermissionDenied)
    # A name without a password is never asked for one.
    assert isinstance(await _login(server.port, "bob", SECRET), asyncssh.PermissionDenied)
    assert _passwd(tmp_path, "anna", "--remove").returncode == 0
    assert isinstance(await _login(server.port, "anna", SECRET), asyncssh.PermissionDenied)


async def test_passwords_are_off_by_default(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server()
    result = _passwd(tmp_path, "anna", stdin=SECRET + "\n")
    assert result.returncode == 0
    assert "password_auth is off" in result.stdout
    assert isinstance(await _login(server.port, "anna", SECRET), asyncssh.PermissionDenied)


def test_passwd_refuses_a_short_password_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "kindlessh.toml").write_text("")
    result = _passwd(tmp_path, "anna", stdin="short\n")
    assert result.returncode == 1
    assert result.stderr.strip() == "kindlessh: a password must have at least 10 characters"
