"""Cutting a PostgreSQL store's liveness from the server's side, for the tests of a
worker that loses its link (a PostgreSQL restart, a dropped connection) but lives on."""

from __future__ import annotations

import asyncio

import psycopg

from kindlessh._pg_store import LIVE_LOCK_CLASS, PostgresStore, lock_key


async def cut_liveness(url: str, store: PostgresStore) -> None:
    """Cut ``store``'s dedicated connection from the server's side (as a restart of
    PostgreSQL or a dropped link would) and wait until its liveness lock is gone. The
    store does not listen, so it does not reconnect until told to."""
    pid = store._conn.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            held = admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::int8 = %s AND objid::int8 = %s",
                (LIVE_LOCK_CLASS, lock_key(store.owner)),
            ).fetchone()
            if held == (0,):
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the lock outlived its connection")
