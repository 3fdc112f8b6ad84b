"""The e-ink cursor: a steady block asked for on e-ink, the terminal's own given back on
every way out (quit, idle close, server shutdown, a switch to the laptop profile)."""

from __future__ import annotations

import asyncio

from kindlessh import Server

from .conftest import ServerFactory
from .helpers import connected, open_chat

STEADY = "\x1b[2 q"
BLINK_OFF = "\x1b[?12l"
DEFAULT = "\x1b[0 q"


def _restored_after_steady(raw: str) -> bool:
    """A steady cursor was asked for, and the terminal's own came back after it."""
    return STEADY in raw and BLINK_OFF in raw and raw.rfind(DEFAULT) > raw.rfind(STEADY)


async def test_eink_asks_for_a_steady_cursor_and_gives_it_back_on_quit(server: Server) -> None:
    async with connected(server, cols=54, rows=20, command="eink") as term:
        raw = term.raw_text()
        assert STEADY in raw and BLINK_OFF in raw
        assert DEFAULT not in raw
        await term.send("/quit\r")
        await term.wait_closed()
        raw = term.raw_text()
        assert _restored_after_steady(raw)
        # Given back before the goodbye line, and only once.
        assert raw.count(DEFAULT) == 1


async def test_smooth_leaves_the_cursor_alone(server: Server) -> None:
    async with connected(server, cols=66, rows=20) as term:
        await term.send("/quit\r")
        await term.wait_closed()
        raw = term.raw_text()
        # (prompt-toolkit itself sends CSI ?12l with every cursor show.)
        assert STEADY not in raw and DEFAULT not in raw


async def test_switching_profiles_live_switches_the_cursor(server: Server) -> None:
    async with connected(server, cols=54, rows=30) as term:
        assert STEADY not in term.raw_text()
        await term.send("/eink\r")
        await term.wait_for("Screen profile: eink.")
        assert STEADY in term.raw_text()
        await term.send("/smooth\r")
        await term.wait_for("Screen profile: smooth.")
        assert _restored_after_steady(term.raw_text())
        await term.send("/quit\r")
        await term.wait_closed()
        assert term.raw_text().count(DEFAULT) == 1  # not given back twice


async def test_an_idle_close_gives_the_cursor_back(make_server: ServerFactory) -> None:
    server = await make_server(server={"idle_timeout": 0.3})
    term = await open_chat(server, command="eink")
    try:
        await term.wait_closed(timeout=3)
        raw = term.raw_text()
        assert "without input" in raw
        assert _restored_after_steady(raw)
        assert raw.rfind(DEFAULT) < raw.rfind("without input")
    finally:
        await term.close()


async def test_a_server_shutdown_gives_the_cursor_back(make_server: ServerFactory) -> None:
    server = await make_server()
    term = await open_chat(server, command="eink")
    try:
        await asyncio.wait_for(server.close(), 10)
        await term.wait_closed()
        raw = term.raw_text()
        assert "shutting down" in raw
        assert _restored_after_steady(raw)
    finally:
        await term.close()
