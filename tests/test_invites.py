"""Invite codes: made, stored as hashes, used once, expiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kindlessh import _invites as _invites_module
from kindlessh._errors import UserError
from kindlessh._invites import ALPHABET, CODE_BITS, Invites, new_code, parse_ttl

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=15)


def test_codes_are_easy_to_type_and_hard_to_guess() -> None:
    assert CODE_BITS >= 40
    assert not set(ALPHABET) & set("il1o0IO")
    assert set(ALPHABET) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(set(code) <= set(ALPHABET) for code in codes)


def test_the_right_code_works_once(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    code, invite = invites.create("kindle", profile="eink", ttl=TTL, now=NOW)
    assert invite.expires == NOW + TTL
    assert invites.pending("kindle", NOW) == invite
    outcome, redeemed = invites.redeem("kindle", code, NOW + timedelta(minutes=1))
    assert outcome == "ok" and redeemed is not None and redeemed.profile == "eink"
    assert invites.redeem("kindle", code, NOW) == ("gone", None)
    assert invites.pending("kindle", NOW) is None


def test_typed_codes_ignore_case_spaces_and_hyphens(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    typed = f" {code[:3].upper()}-{code[3:6]} {code[6:]} "
    assert invites.redeem("kindle", typed, NOW)[0] == "ok"


def test_a_wrong_code_keeps_the_invite(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    wrong = "".join(ALPHABET[(ALPHABET.index(c) + 1) % len(ALPHABET)] for c in code)
    assert invites.redeem("kindle", wrong, NOW) == ("wrong", None)
    assert invites.redeem("other", code, NOW) == ("gone", None)  # a code is for its name
    assert invites.pending("kindle", NOW) is not None
    assert invites.redeem("kindle", code, NOW)[0] == "ok"


def test_expired_invites_do_nothing_and_are_dropped(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    later = NOW + TTL + timedelta(seconds=1)
    assert invites.pending("kindle", later) is None
    assert invites.redeem("kindle", code, later) == ("gone", None)
    assert invites.all(later) == []
    assert "kindle" not in (tmp_path / "invites.json").read_text()


def test_only_hashes_are_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "invites.json"
    invites = Invites(path)
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    assert code not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_new_invite_replaces_the_old_and_revoke_removes_it(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    first, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    second, _ = invites.create("kindle", profile="eink", ttl=TTL, now=NOW)
    assert invites.redeem("kindle", first, NOW) == ("wrong", None)
    assert [i.name for i in invites.all(NOW)] == ["kindle"]
    assert invites.revoke("kindle")
    assert not invites.revoke("kindle")
    assert invites.redeem("kindle", second, NOW) == ("gone", None)


def test_two_writers_keep_each_other_s_invites(tmp_path: Path) -> None:
    path = tmp_path / "invites.json"
    cli, server = Invites(path), Invites(path)
    code_a, _ = cli.create("a", profile=None, ttl=TTL, now=NOW)
    code_b, _ = server.create("b", profile=None, ttl=TTL, now=NOW)
    assert {i.name for i in cli.all(NOW)} == {"a", "b"}
    assert server.redeem("a", code_a, NOW)[0] == "ok"
    assert [i.name for i in cli.all(NOW)] == ["b"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("15", 900), ("2h", 7200), ("1d", 86400), ("90s", 90)]
)
def test_ttl_forms(text: str, seconds: int) -> None:
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0m", "8d", "soon", "-5m", "1.5h"])
def test_bad_ttls_are_refused(text: str) -> None:
    with pytest.raises(UserError):
        parse_ttl(text)


def test_a_failed_enrolment_leaves_the_invite_standing(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)

    def fails(invite: object) -> None:
        raise UserError("disk full")

    with pytest.raises(UserError):
        invites.redeem("kindle", code, NOW, fails)
    enrolled: list[str] = []
    assert invites.redeem("kindle", code, NOW, lambda i: enrolled.append(i.name))[0] == "ok"
    assert enrolled == ["kindle"]


def test_an_invite_replaced_while_the_code_is_checked_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scrypt runs outside the lock; an invite replaced meanwhile is not the one the
    code was for, so nothing is enrolled."""
    invites = Invites(tmp_path / "invites.json")
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    real_hash = _invites_module._hash

    def hash_while_the_owner_replaces_it(typed: str, salt: bytes) -> bytes:
        monkeypatch.setattr(_invites_module, "_hash", real_hash)  # once
        Invites(invites.path).create("kindle", profile="eink", ttl=TTL, now=NOW)
        return real_hash(typed, salt)

    monkeypatch.setattr(_invites_module, "_hash", hash_while_the_owner_replaces_it)
    enrolled: list[object] = []
    assert invites.redeem("kindle", code, NOW, enrolled.append) == ("gone", None)
    assert enrolled == []
