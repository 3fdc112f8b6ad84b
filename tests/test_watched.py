"""Files read again only when they change: the unit, and the invites and passwords on it."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kindlessh import _passwords as passwords_module
from kindlessh._invites import Invites
from kindlessh._passwords import Passwords
from kindlessh._watched import Watched

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=15)
SECRET = "correct horse battery"


def _text(path: Path, st: os.stat_result) -> str:
    return path.read_text()


def _replace(path: Path, text: str) -> None:
    """Write as the commands do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_file_is_read_once_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    watched = Watched(path, _text, "absent")
    assert watched.get() == "absent" and watched.reads == 0
    path.write_text("one")
    assert [watched.get() for _ in range(3)] == ["one"] * 3
    assert watched.reads == 1
    _replace(path, "two")
    assert watched.get() == "two" and watched.reads == 2
    path.chmod((path.stat().st_mode & 0o777) ^ 0o040)  # a mode change is a change too
    watched.get()
    assert watched.reads == 3
    path.unlink()
    assert watched.get() == "absent"


def test_a_failed_read_keeps_nothing_and_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    calls: list[int] = []

    def fails_once(p: Path, st: os.stat_result) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad")
        return p.read_text()

    watched = Watched(path, fails_once, "")
    with pytest.raises(ValueError):
        watched.get()
    assert watched.get() == "x" and watched.get() == "x"
    assert len(calls) == 2


def test_pending_invites_are_read_only_when_the_file_changes(tmp_path: Path) -> None:
    server = Invites.beside(tmp_path / "keys" / "users")  # one for the server's life
    owner = Invites.beside(tmp_path / "keys" / "users")  # `kindlessh invite`, meanwhile
    assert server.pending("kindle", NOW) is None
    owner.create("kindle", profile="eink", ttl=TTL, now=NOW)
    invite = server.pending("kindle", NOW)
    assert invite is not None and invite.profile == "eink"
    reads = server._seen.reads
    for _ in range(5):
        assert server.pending("kindle", NOW) == invite
    assert server._seen.reads == reads
    owner.revoke("kindle")
    assert server.pending("kindle", NOW) is None
    assert server._seen.reads == reads + 1


def test_a_password_file_is_read_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    trusted = passwords_module._trusted

    def counted(path: Path, st: os.stat_result) -> str | None:
        reads.append(path)
        return trusted(path, st)

    monkeypatch.setattr(passwords_module, "_trusted", counted)
    server = Passwords(tmp_path / "users")
    Passwords(tmp_path / "users").set("anna", SECRET)
    assert server.check("anna", SECRET) and server.check("anna", SECRET)
    assert len(reads) == 1
    Passwords(tmp_path / "users").set("anna", "another password")
    assert server.check("anna", "another password")
    assert len(reads) == 2
