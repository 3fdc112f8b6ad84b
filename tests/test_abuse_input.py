"""Attacks through the input path (issue 18, items 1, 2 and 8): each runs against the real
server while a bystander keeps typing beside it.

Each test checks what issue 18 asks of every attack: the bystander's worst echo stays
under ``ECHO_LIMIT``, a new login still comes up, and the server's memory is back within
``MEMORY_SLACK_MIB`` of where it was once the attacker has gone; and, where there is one,
what the attacker sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kindlessh import Server

from .bystander import ECHO_LIMIT, MEMORY_SLACK_MIB, Bystander, bystander, can_log_in, rss_mib
from .helpers import TermOptions, open_chat, until
from .sshterm import Terminal


@asynccontextmanager
async def attack(
    server: Server, **options: object
) -> AsyncIterator[tuple[Bystander, Terminal]]:
    """A bystander typing, an attacker's chat beside it; checks the three figures after."""
    before = rss_mib()
    async with bystander(server) as person:
        opts: TermOptions = {"username": "attacker", **options}  # type: ignore[typeddict-item]
        term = await open_chat(server, **opts)
        try:
            yield person, term
        finally:
            await term.close()
        await until(lambda: len(server.ctx.session.sessions) == 1)
        await can_log_in(server)
    after = rss_mib()
    print(f"worst echo {person.worst * 1000:.0f} ms; rss {before:.0f} -> {after:.0f} MiB")
    assert person.worst < ECHO_LIMIT, person.echoes
    assert after - before < MEMORY_SLACK_MIB


async def write(term: Terminal, data: str) -> None:
    """Send ``data`` as one write and wait until the client has handed all of it over."""
    assert term.chan is not None
    term.chan.write(data)
    while term.chan.get_write_buffer_size():
        await asyncio.sleep(0.01)


async def settled(person: Bystander, echoes: int = 3) -> None:
    """Wait until the bystander has seen a few more echoes: the server has caught up."""
    count = len(person.echoes)
    await until(lambda: len(person.echoes) >= count + echoes, timeout=60)


async def test_typing_50_kb_keeps_memory_bounded_and_is_refused_once(server: Server) -> None:
    # 50 KB typed as 100-byte packets: every packet is typing (far under a paste burst),
    # and every key press used to store the whole input line again.
    packet = ("the quick brown fox jumps over the lazy dog " * 3)[:100]
    async with attack(server) as (person, term):
        for _ in range(500):
            await term.send(packet)
        await term.send("\x03done")  # Ctrl-C clears what is left of the flood
        await term.wait_for(lambda t: t.screen.display[-1].strip() == "> done", timeout=60)
        await term.wait_for("That input has 48,006 characters; a message may have at most 4,000.")
        # Refused as a whole, once: one notice with the count of every refused burst
        # (6 x 8,001: the line full, plus the key that would go over); the 1,994 left
        # after the last went with Ctrl-C.
        assert term.joined().count("a message may have at most") == 1
        await settled(person)


async def test_a_20000_digit_escape_sequence_is_dropped(server: Server) -> None:
    async with attack(server) as (person, term):
        await write(term, "\x1b[" + "1" * 20_000 + "m")
        await term.send("after")
        await term.wait_for(lambda t: t.screen.display[-1].strip() == "> after")
        await settled(person)


async def test_a_paste_that_never_ends_is_bounded(server: Server) -> None:
    async with attack(server) as (person, term):
        await write(term, "\x1b[200~")
        chunk = "p" * 32_768
        for _ in range(8 * 32):  # 8 MB, and no end mark
            await write(term, chunk)
        await settled(person)


async def test_thousands_of_environment_variables_are_not_kept(server: Server) -> None:
    env = {f"VAR{i}": "v" * 1024 for i in range(200)}
    env["KINDLESSH_PROFILE"] = "eink"
    async with attack(server, env=env) as (person, term):
        (session,) = [s for s in server.ctx.session.sessions if s.username == "attacker"]
        kept = dict(session._chan.get_environment())
        print(f"environment kept: {len(kept)} variables")
        assert kept == {"KINDLESSH_PROFILE": "eink"}
        await settled(person)
