"""Password login, below SSH: who is asked, checking, and files changed meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kindlessh._password_login import PasswordLogin
from kindlessh._passwords import Passwords

SECRET = "correct horse battery"


@pytest.fixture
def passwords(tmp_path: Path) -> Passwords:
    return Passwords(tmp_path / "keys" / "users")


async def test_off_nobody_is_asked_and_nothing_matches(passwords: Passwords) -> None:
    passwords.set("anna", SECRET)
    login = PasswordLogin(passwords, enabled=False)
    assert not login.asks("anna")
    assert not await login.check("anna", SECRET)


async def test_on_every_name_is_asked_and_only_a_password_matches(
    passwords: Passwords, caplog: pytest.LogCaptureFixture
) -> None:
    passwords.set("anna", SECRET)
    login = PasswordLogin(passwords, enabled=True)
    # Asked alike: the methods offered never tell who has a password.
    assert login.asks("anna") and login.asks("bob") and login.asks("../anna")
    with caplog.at_level(logging.INFO, logger="kindlessh.server"):
        assert await login.check("anna", SECRET, addr="192.0.2.7")
        assert not await login.check("anna", "wrong password", addr="192.0.2.7")
        assert not await login.check("bob", SECRET, addr="192.0.2.7")
    logged = [r.getMessage() for r in caplog.records if r.name == "kindlessh.server"]
    assert logged == ["192.0.2.7: password accepted for anna"]


async def test_passwords_set_and_removed_meanwhile_count_at_once(passwords: Passwords) -> None:
    login = PasswordLogin(passwords, enabled=True)  # one for the server's whole life
    assert not await login.check("anna", SECRET)
    Passwords(passwords.root.parent / "users").set("anna", SECRET)  # as `user passwd` does
    assert await login.check("anna", SECRET)
    Passwords(passwords.root.parent / "users").set("anna", "another password")
    assert not await login.check("anna", SECRET)
    assert await login.check("anna", "another password")
    Passwords(passwords.root.parent / "users").remove("anna")
    assert not await login.check("anna", "another password")
