"""Attacks on accounts and limits (issue 18, items 6, 7 and 8): each performed against the
real server, checking what the attacker gets and, where the attack costs CPU, that a
bystander typing beside it keeps a prompt echo.

- One key under many names: the questions, tokens and chats it gets are one holder's.
- A name longer than allowed is refused, never cut to share another's account.
- Probing names: every name is answered with the same methods; many names from one
  address earn a penalty; a name with nothing to guess costs the same scrypt.
- Guessing passwords from many addresses: scrypt checks are bounded server-wide.
- An endless answer is cut at ``[chat] max_answer_chars`` and its response closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from kindlessh import Server, _invites, _passwords
from kindlessh._guesses import GuessBudget
from kindlessh._invites import Invites
from kindlessh._passwords import Passwords
from kindlessh._probes import WINDOW, NameProbes

from .bystander import ECHO_LIMIT, bystander, can_log_in, elsewhere
from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import FakeClock, connected, open_chat, until
from .sshterm import Terminal

KW: dict[str, Any] = {"known_hosts": None, "agent_path": None}
ANSWER = "Fine answer."
SECRET = "correct horse battery"


def _refused(term: Terminal) -> bool:
    text = term.joined()
    return "Slow down" in text or "You have used today" in text


async def _ask_once(term: Terminal, fake: FakeGemini, server: Server) -> str:
    """Ask one question: "answered" once it reached Gemini and its answer ended, or
    "refused" once the screen says so."""
    asked = len(fake.requests)
    hub = server.ctx.session.hub

    def ended() -> bool:
        return len(fake.requests) > asked and not any(
            c.conversation.answering for c in hub.chats
        )

    await term.ask("hello?")
    await term.wait_until(lambda: _refused(term) or ended(), "an answer or a refusal")
    return "refused" if _refused(term) else "answered"


# ----- 6: limits follow the key ---------------------------------------------------------


async def test_one_shared_key_under_many_names_gets_one_question_budget(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    fake_gemini.default_reply = Reply.text([ANSWER])
    server = await make_server(quota={"prompts": 3, "refill_seconds": 3600.0})
    outcomes = []
    for i in range(6):
        async with connected(server, username=f"name{i}") as term:
            outcomes.append(await _ask_once(term, fake_gemini, server))
    # Before: six names, six fresh buckets, every question answered.
    assert outcomes.count("answered") == 3, outcomes
    assert len(fake_gemini.requests) == 3


async def test_one_shared_key_under_many_names_gets_one_daily_budget(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    # Each answer reports 8 + 60 tokens; the budget is 100.
    fake_gemini.default_reply = Reply.text([ANSWER], candidate_tokens=[60])
    server = await make_server(quota={"daily_tokens": 100})
    outcomes = []
    for i in range(4):
        async with connected(server, username=f"day{i}") as term:
            outcomes.append(await _ask_once(term, fake_gemini, server))
    assert outcomes == ["answered", "answered", "refused", "refused"], outcomes
    # /usage under yet another name shows the key's tokens, not the name's.
    async with connected(server, username="day9", cols=100) as term:
        await term.send("/usage\r")
        await term.wait_for("Tokens today: 136")
    # The ledger is summed by holder, across restarts too.
    (holder,) = {row for row in await _ledger_holders(server)}
    assert holder.startswith("key:SHA256:")
    assert await server.ctx.quota.store.tokens_used(holder, datetime(2000, 1, 1, tzinfo=UTC)) == 136


async def _ledger_holders(server: Server) -> list[str]:
    def job(conn: Any) -> list[str]:
        return [row[0] for row in conn.execute("SELECT holder FROM token_usage")]

    return await server.ctx.quota.store._call(job)


async def test_one_shared_key_under_many_names_gets_one_session_cap(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    server = await make_server(server={"max_sessions_per_user": 2})
    terms = [await open_chat(server, username=f"cap{i}") for i in range(2)]
    try:
        third = await Terminal.connect(server.port, client_key, username="cap2")
        await third.wait_for("server full")
        await third.wait_closed()
        assert server.ctx.guard.sessions == 2
    finally:
        for term in terms:
            await term.close()


async def test_a_user_with_their_own_file_is_their_own_holder(
    make_server: ServerFactory, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    # A user file's keys log in only as that name: the name is the holder.
    fake_gemini.default_reply = Reply.text([ANSWER])
    server = await make_server(quota={"prompts": 1, "refill_seconds": 3600.0})
    anna = asyncssh.generate_private_key("ssh-ed25519")
    users = tmp_path / "keys" / "users"
    users.mkdir(parents=True, mode=0o700)
    (users / "anna").write_text(anna.export_public_key().decode())
    (users / "anna").chmod(0o600)
    async with connected(server, username="someone") as term:  # the shared key
        assert await _ask_once(term, fake_gemini, server) == "answered"
    async with connected(server, anna, username="anna") as term:
        assert await _ask_once(term, fake_gemini, server) == "answered"
    async with connected(server, anna, username="anna") as term:
        assert await _ask_once(term, fake_gemini, server) == "refused"


@pytest.mark.parametrize("length", [33, 40, 200])
async def test_a_name_longer_than_allowed_is_refused_not_cut(
    server: Server, client_key: asyncssh.SSHKey, length: int
) -> None:
    with pytest.raises(asyncssh.IllegalUserName, match="at most 32 characters"):
        await asyncssh.connect(
            "127.0.0.1", server.port, username="x" * length, client_keys=[client_key], **KW
        )
    assert not server.ctx.session.hub.chats


async def test_a_name_of_32_characters_is_its_own_account(server: Server) -> None:
    async with connected(server, username="y" * 32):
        assert [c.user for c in server.ctx.session.hub.chats] == ["y" * 32]


# ----- 7: probing names -----------------------------------------------------------------


async def _methods(server: Server, name: str) -> list[str]:
    return list(
        await asyncssh.get_server_auth_methods("127.0.0.1", server.port, username=name)
    )


async def test_every_name_is_offered_the_same_methods(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(
        server={"password_auth": True, "penalty_exempt": "127.0.0.0/8"}
    )
    users = tmp_path / "keys" / "users"
    Invites.beside(users).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                 now=datetime.now(UTC))
    Passwords(users).set("anna", SECRET)
    seen = {name: await _methods(server, name) for name in ("kindle", "anna", "bob", "zed")}
    # Before: kindle got keyboard-interactive, anna password, the others publickey alone.
    assert len({tuple(m) for m in seen.values()}) == 1, seen
    assert set(seen["bob"]) == {"publickey", "password", "keyboard-interactive"}


async def test_no_invite_pending_offers_no_keyboard(make_server: ServerFactory) -> None:
    server = await make_server(server={"penalty_exempt": "127.0.0.0/8"})
    assert await _methods(server, "kindle") == ["publickey"]


async def test_many_names_from_one_address_earn_a_penalty(
    make_server: ServerFactory,
) -> None:
    server = await make_server(server={"max_names_per_source": 4})
    for i in range(8):
        if server.ctx.guard.refused_for("127.0.0.1"):
            break
        await _methods(server, f"probe{i}")
        await until(lambda: server.ctx.guard.logging_in == 0)
    # Before: eight names, one second of penalty each, drained as fast: never refused.
    assert server.ctx.guard.refused_for("127.0.0.1") > 0


class _Guesser(asyncssh.SSHClient):
    """Answers every password prompt with a wrong password, and every code prompt with a
    wrong code; counts what it was asked."""

    def __init__(self) -> None:
        self.passwords = 0
        self.prompts: list[str] = []

    def password_auth_requested(self) -> str:
        self.passwords += 1
        return f"wrong password {self.passwords}"

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Any
    ) -> list[str]:
        self.prompts += [p for p, _ in prompts]
        return ["aaaaaaaaa"] * len(prompts)


async def _guess(
    server: Server, name: str, *, methods: str, local: str = "127.0.0.1"
) -> _Guesser:
    guesser = _Guesser()
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", server.port, username=name, client_keys=None, password=None,
            kbdint_auth=True, client_factory=lambda: guesser, preferred_auth=methods,
            local_addr=(local, 0), **KW,
        )
    except (asyncssh.Error, OSError):
        return guesser
    conn.close()
    raise AssertionError("a wrong guess logged in")


def _count_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real_password, real_code = _passwords._scrypt, _invites._hash

    def password(*args: Any) -> bytes:
        calls[0] += 1
        return real_password(*args)

    def code(*args: Any) -> bytes:
        calls[0] += 1
        return real_code(*args)

    monkeypatch.setattr(_passwords, "_scrypt", password)
    monkeypatch.setattr(_invites, "_hash", code)
    return calls


async def test_a_name_with_nothing_to_guess_costs_the_same_scrypt(
    make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(
        server={"password_auth": True, "penalty_exempt": "127.0.0.0/8"}
    )
    users = tmp_path / "keys" / "users"
    Invites.beside(users).create("kindle", profile=None, ttl=timedelta(minutes=5),
                                 now=datetime.now(UTC))
    Passwords(users).set("anna", SECRET)
    calls = _count_scrypt(monkeypatch)
    per_name = {}
    for name in ("anna", "bob"):
        calls[0] = 0
        guesser = await _guess(server, name, methods="password")
        per_name[name] = (guesser.passwords, calls[0])
    assert per_name["anna"] == per_name["bob"] and per_name["bob"][1] > 0, per_name
    for name in ("kindle", "bob"):
        calls[0] = 0
        guesser = await _guess(server, name, methods="keyboard-interactive")
        per_name[name] = (len(guesser.prompts), calls[0])
    assert per_name["kindle"] == per_name["bob"], per_name


# ----- 8e: password guessing from many addresses ----------------------------------------


async def test_password_guessing_from_many_addresses_is_bounded(
    make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(
        server={
            "password_auth": True,
            "max_startups": 100,
            "max_startups_full": 200,
            "password_checks_per_second": 5.0,
        }
    )
    Passwords(tmp_path / "keys" / "users").set("anna", SECRET)
    calls = _count_scrypt(monkeypatch)
    cpu = time.process_time()
    began = time.monotonic()
    async def attacker(i: int) -> None:
        # Forty addresses joining over two seconds: the handshakes (the attacker's own
        # ones included, in this process) must not be what the echo measures.
        await asyncio.sleep(i * 0.05)
        await _guess(server, "anna", methods="password", local=f"127.0.0.{i + 2}")

    async def attack() -> None:
        await asyncio.gather(*(attacker(i) for i in range(40)))

    async with bystander(server) as person:
        await elsewhere(attack)
        await can_log_in(server)
    seconds = time.monotonic() - began
    used = time.process_time() - cpu
    print(f"\n40 addresses: {calls[0]} scrypt checks in {seconds:.2f} s, "
          f"{used:.2f} s CPU, worst echo {person.worst * 1000:.0f} ms")
    # 5 a second and a burst of 5: far fewer than the 40 x 4 guesses sent.
    assert calls[0] <= 5 + 5 * seconds + 1
    assert person.worst < ECHO_LIMIT


# ----- 8c: an endless answer ------------------------------------------------------------


async def test_an_endless_answer_is_cut_and_its_response_closed(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.hang(["x" * 500 + " "] * 60))
    server = await make_server(chat={"max_answer_chars": 2000})
    async with connected(server) as term:
        await term.ask("tell me everything")
        await term.wait_for("[truncated")
        response = await fake_gemini.wait_responses(1)
        await asyncio.wait_for(response.client_closed.wait(), 5)
        (chat,) = server.ctx.session.hub.chats
        turn = chat.conversation.turns[-1]
        assert len(turn.answer) <= 2000
        await chat.recorder.flush()
        rows = await server.ctx.quota.store.load_turns(chat.user, chat.id or 0)
        assert len(rows[-1].answer) <= 2000
        assert rows[-1].incomplete


# ----- the budgets alone, with a fake clock ---------------------------------------------


async def test_the_guess_budget_refuses_over_its_rate_and_at_once() -> None:
    budget = GuessBudget(rate=2.0, at_once=1)
    clock = FakeClock()
    budget.clock = clock
    budget._at = clock.now
    gate = threading.Event()
    first = asyncio.ensure_future(budget.run(gate.wait))
    await asyncio.sleep(0)
    assert budget.running == 1
    assert await budget.run(lambda: True) is None  # one at a time: refused unchecked
    gate.set()
    assert await first is True
    assert await budget.run(lambda: True) is True  # the bucket's second check
    assert await budget.run(lambda: True) is None  # spent
    clock.advance(0.5)  # one more check every half second
    assert await budget.run(lambda: True) is True
    assert (budget.checks, budget.refused) == (3, 2)


def test_name_probes_count_distinct_names_per_address_in_a_window() -> None:
    probes = NameProbes(limit=2)
    clock = FakeClock()
    probes.clock = clock
    assert not probes.tried("192.0.2.1", "a")
    assert not probes.tried("192.0.2.1", "b")
    assert not probes.tried("192.0.2.1", "a")  # the same name again is not new
    assert not probes.tried("::ffff:192.0.2.2", "c")  # another address
    assert probes.tried("::ffff:192.0.2.1", "c")  # the same address, mapped
    assert probes.tried("192.0.2.1", "d")
    clock.advance(WINDOW)
    assert not probes.tried("192.0.2.1", "e")  # the old names were forgotten
