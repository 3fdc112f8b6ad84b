"""The upstream HTTP client's pool puts no cap of its own on answers in flight:
``[quota] max_upstream`` is the cap (one of 100 in the pool held the 101st answer of a
process in a queue, found by bench/load.py with several workers)."""

from __future__ import annotations

import asyncio

from kindlessh._upstream import make_client

STREAMS = 120  # above the pool cap of 100 there was


async def test_more_than_a_hundred_streams_are_open_at_once() -> None:
    arrived = 0
    all_here = asyncio.Event()
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                     b"transfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        arrived += 1
        if arrived == STREAMS:
            all_here.set()
        await release.wait()  # the body stays open until every stream has begun
        writer.write(b"1\r\nb\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(connect=5, first_byte=5, chunk=5)

    async def stream() -> bytes:
        async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
            return await response.aread()

    try:
        tasks = [asyncio.create_task(stream()) for _ in range(STREAMS)]
        try:
            await asyncio.wait_for(all_here.wait(), 10)
        finally:
            release.set()
        bodies = await asyncio.gather(*tasks)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert arrived == STREAMS
    assert bodies == [b"ab"] * STREAMS

