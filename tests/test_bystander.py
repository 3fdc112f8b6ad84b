"""The bystander used by the attack tests sees a stalled server, and an idle one is quick."""

from __future__ import annotations

import asyncio
import time

from kindlessh import Server

from .bystander import ECHO_LIMIT, bystander, can_log_in, rss_mib


async def test_an_idle_server_echoes_quickly_and_lets_people_in(server: Server) -> None:
    async with bystander(server) as person:
        while len(person.echoes) < 5:
            await asyncio.sleep(0.02)
        await can_log_in(server)
    assert person.worst < ECHO_LIMIT
    assert rss_mib() > 0


async def test_a_stalled_event_loop_shows_as_a_slow_echo(server: Server) -> None:
    async with bystander(server) as person:
        count = len(person.echoes)
        time.sleep(0.4)  # the whole loop held, as a costly request would hold it
        while len(person.echoes) < count + 2:
            await asyncio.sleep(0.02)
    assert person.worst >= 0.3
