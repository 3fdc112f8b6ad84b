"""Which keys may log in as a name, below SSH: a user's own file or the shared one."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncssh
import pytest

from kindlessh._keychoice import NO_KEYS_BANNER, Choice, KeyChoice
from kindlessh._keys import AuthorizedKeys
from kindlessh._users import Users, parse_keys


def _key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def _line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode()


def _lets_in(choice: Choice, key: asyncssh.SSHKey) -> bool:
    public = asyncssh.import_public_key(key.export_public_key())
    return choice.keys is not None and choice.keys.validate(public, "", "127.0.0.1") is not None


@pytest.fixture
def shared_key() -> asyncssh.SSHKey:
    return _key()


@pytest.fixture
def choice(tmp_path: Path, shared_key: asyncssh.SSHKey) -> KeyChoice:
    (tmp_path / "authorized_keys").write_text(_line(shared_key))
    return KeyChoice(Users(tmp_path / "users"), AuthorizedKeys(tmp_path / "authorized_keys"))


def test_any_name_without_a_file_uses_the_shared_keys(
    choice: KeyChoice, shared_key: asyncssh.SSHKey
) -> None:
    for name in ("reader", "anyone", "Not A User"):
        chosen = choice.choose(name)
        assert _lets_in(chosen, shared_key) and not _lets_in(chosen, _key())
        assert chosen.banner is None


def test_a_user_s_name_takes_that_user_s_keys_alone(
    choice: KeyChoice, shared_key: asyncssh.SSHKey
) -> None:
    own = _key()
    choice.users.add("ann", parse_keys(_line(own), "test"))
    chosen = choice.choose("ann")
    assert _lets_in(chosen, own)
    assert not _lets_in(chosen, shared_key)  # the shared keys do not open a user's name
    assert _lets_in(choice.choose("bob"), shared_key)
    assert not _lets_in(choice.choose("bob"), own)


def test_a_user_file_others_may_write_lets_nobody_in_and_is_logged(
    choice: KeyChoice, shared_key: asyncssh.SSHKey, caplog: pytest.LogCaptureFixture
) -> None:
    own = _key()
    choice.users.add("ann", parse_keys(_line(own), "test"))
    choice.users.path("ann").chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="kindlessh.server"):
        chosen = choice.choose("ann")
    assert chosen == Choice(None, personal=True)  # the name is ann's: no shared key either
    assert "chmod 600" in caplog.text


def test_keys_added_meanwhile_count_at_the_next_choice(
    choice: KeyChoice, shared_key: asyncssh.SSHKey
) -> None:
    later = _key()
    assert not _lets_in(choice.choose("reader"), later)
    path = choice.authorized.path
    path.write_text(_line(shared_key) + _line(later) + "\n")
    assert _lets_in(choice.choose("reader"), later)


def test_with_no_key_at_all_the_banner_says_how_to_add_one(tmp_path: Path) -> None:
    (tmp_path / "authorized_keys").write_text("# nothing yet\n")
    choice = KeyChoice(Users(tmp_path / "users"), AuthorizedKeys(tmp_path / "authorized_keys"))
    assert choice.choose("reader") == Choice(None, NO_KEYS_BANNER)
    # Not to a name with an invite pending: that login is asked for its code instead.
    assert choice.choose("kindle", invite_pending=True) == Choice(None)
    # Not once any user has keys: the server is set up, this name just is not in it.
    choice.users.add("ann", parse_keys(_line(_key()), "test"))
    assert choice.choose("reader") == Choice(None)


def test_a_missing_shared_file_is_no_keys(tmp_path: Path) -> None:
    choice = KeyChoice(Users(tmp_path / "users"), AuthorizedKeys(tmp_path / "absent"))
    assert choice.choose("reader").keys is None
