"""Enrolment by invite code, below SSH: offered keys, tries, the challenge, redeeming."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from kindlessh._enrol import (
    GONE,
    MAX_CODE_TRIES,
    MAX_OFFERED,
    NO_CLIENT_KEY,
    NO_KEY_OFFERED,
    NOT_STORED,
    TOO_MANY,
    Enrolment,
    Reply,
)
from kindlessh._invites import ALPHABET, Invites
from kindlessh._users import Users

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=15)


class Clock:
    """Wall-clock time that moves only when told."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def _wrong(code: str) -> str:
    return "".join(ALPHABET[(ALPHABET.index(c) + 1) % len(ALPHABET)] for c in code)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def invites(tmp_path: Path) -> Invites:
    return Invites(tmp_path / "invites.json")


@pytest.fixture
def users(tmp_path: Path) -> Users:
    return Users(tmp_path / "users")


@pytest.fixture
def enrol(invites: Invites, users: Users, clock: Clock) -> Enrolment:
    return Enrolment(invites, users, addr="192.0.2.7", now=clock)


def test_without_an_invite_nothing_is_asked_or_kept(enrol: Enrolment) -> None:
    enrol.begin("kindle")
    enrol.offer(_key())
    assert enrol.invite is None
    assert enrol.offered == []
    assert not enrol.asks()


def test_offered_keys_are_kept_once_each_up_to_the_cap(
    enrol: Enrolment, invites: Invites
) -> None:
    invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    assert enrol.asks()
    first = _key()
    enrol.offer(first)
    enrol.offer(first)  # Dropbear offers its default key again
    for _ in range(MAX_OFFERED + 5):
        enrol.offer(_key())
    assert len(enrol.offered) == MAX_OFFERED
    assert enrol.offered[0] is first


def test_a_new_login_name_forgets_the_keys_offered_before(
    enrol: Enrolment, invites: Invites
) -> None:
    invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    enrol.begin("other")
    assert enrol.offered == [] and enrol.invite is None
    enrol.begin("Not A Name")  # never looked up: not a possible user name
    assert enrol.invite is None


def test_the_challenge_names_the_key_and_asks_for_the_code(
    enrol: Enrolment, invites: Invites
) -> None:
    invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    key = _key()
    enrol.offer(key)
    name, instruction, lang, prompts = enrol.challenge("kindle")
    assert (name, lang) == ("", "")
    assert instruction == f"To register this device's key ({key.get_fingerprint()}) for kindle:\n"
    assert prompts == (("Invite code for kindle: ", True),)


async def test_the_right_code_registers_the_first_key_with_the_profile(
    enrol: Enrolment, invites: Invites, users: Users, caplog: pytest.LogCaptureFixture
) -> None:
    code, _ = invites.create("kindle", profile="eink", ttl=TTL, now=NOW)
    enrol.begin("kindle")
    first, second = _key(), _key()
    enrol.offer(first)
    enrol.offer(second)
    enrol.challenge("kindle")
    with caplog.at_level(logging.INFO, logger="kindlessh.server"):
        reply = await enrol.answer("kindle", [code.upper()])
    assert reply == Reply(accepted=True)
    (entry,) = users.info("kindle").keys
    assert entry.key.public_data == first.public_data
    assert entry.profile == "eink"
    assert enrol.env == {"KINDLESSH_PROFILE": "eink"}
    assert enrol.greeting == (
        f"Your key {first.get_fingerprint()} is now registered for kindle: next time it "
        "logs in by itself. Your device offered 2 keys; the first one was registered."
    )
    assert f"registered key {first.get_fingerprint()} for kindle from 192.0.2.7" in caplog.text
    assert invites.pending("kindle", NOW) is None  # used up


async def test_one_key_and_no_profile_make_a_short_greeting(
    enrol: Enrolment, invites: Invites
) -> None:
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    key = _key()
    enrol.offer(key)
    enrol.challenge("kindle")
    assert (await enrol.answer("kindle", [code])).accepted
    assert enrol.env == {}
    assert enrol.greeting is not None and enrol.greeting.endswith("logs in by itself.")


async def test_three_wrong_codes_end_it_and_keyboard_is_no_longer_offered(
    enrol: Enrolment, invites: Invites, users: Users
) -> None:
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    replies = []
    for _ in range(MAX_CODE_TRIES):
        assert enrol.asks()
        enrol.challenge("kindle")
        replies.append(await enrol.answer("kindle", [_wrong(code)]))
    assert replies == [Reply(), Reply(), Reply(refusal=TOO_MANY)]
    assert enrol.tries == MAX_CODE_TRIES
    assert not enrol.asks()
    assert users.names() == []
    assert invites.pending("kindle", NOW) is not None  # the invite stands


async def test_an_answer_that_is_not_one_line_is_not_a_try(
    enrol: Enrolment, invites: Invites
) -> None:
    invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    enrol.challenge("kindle")
    assert await enrol.answer("kindle", ["a", "b"]) == Reply()
    assert enrol.tries == 0


async def test_no_key_offered_is_told_how_to_make_one(
    enrol: Enrolment, invites: Invites
) -> None:
    invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    assert enrol.challenge("kindle") == ("", NO_CLIENT_KEY + "\n", "", ())
    assert await enrol.answer("kindle", []) == Reply(refusal=NO_KEY_OFFERED)


async def test_an_invite_that_expires_during_the_login_is_gone(
    enrol: Enrolment, invites: Invites, clock: Clock
) -> None:
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    clock.now = NOW + TTL + timedelta(seconds=1)
    gone = GONE.format(name="kindle")
    assert enrol.challenge("kindle") == ("", gone + "\n", "", ())
    assert await enrol.answer("kindle", [code]) == Reply(refusal=gone)
    assert enrol.tries == 0


async def test_an_invite_revoked_after_the_challenge_is_gone(
    enrol: Enrolment, invites: Invites
) -> None:
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    enrol.challenge("kindle")
    invites.revoke("kindle")
    assert await enrol.answer("kindle", [code]) == Reply(refusal=GONE.format(name="kindle"))


async def test_a_key_that_cannot_be_stored_leaves_the_invite_standing(
    invites: Invites, clock: Clock, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    users = Users(tmp_path / "not-a-folder" / "users")  # every write fails
    enrol = Enrolment(invites, users, now=clock)
    code, _ = invites.create("kindle", profile=None, ttl=TTL, now=NOW)
    enrol.begin("kindle")
    enrol.offer(_key())
    enrol.challenge("kindle")
    assert await enrol.answer("kindle", [code]) == Reply(refusal=NOT_STORED)
    assert invites.pending("kindle", NOW) is not None
    assert enrol.greeting is None


def test_an_unreadable_invites_file_invites_nobody_and_is_logged(
    enrol: Enrolment, invites: Invites, caplog: pytest.LogCaptureFixture
) -> None:
    invites.path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="kindlessh.server"):
        enrol.begin("kindle")
    assert not enrol.asks()
    assert f"cannot read the invites in {invites.path}" in caplog.text
