"""``kindlessh migrate``: a SQLite store's history copied into PostgreSQL, counts checked.

Contract:
- :func:`copy_store` copies every conversation, turn and token ledger row of the SQLite
  file into the PostgreSQL database at ``url`` (migrating both to the current schema
  first), keeping ids, positions and every column; new rows there get ids after them.
- The target must hold no conversations, turns or ledger rows: otherwise nothing is
  copied and :class:`~kindlessh._errors.StoreError` says so.
- The copy is one transaction on the target, with the tables locked against writers:
  after copying, the row count of each table (and the ledger's token sums) must equal
  the source's, or it is rolled back; any failure leaves the target as it was.
- Every failure is a :class:`~kindlessh._errors.StoreError` of one line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psycopg

from ._errors import StoreError
from ._migrations import migrate, migrate_postgres
from ._pg_store import Conn, _connect, _enc, describe
from ._sqlite import explain, open_database, parse_time

# What is copied, per table: its columns, and how a SQLite value becomes a PostgreSQL one.
_TEXT = "text"
_TIME = "time"
_BOOL = "bool"
_SAME = "same"


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[tuple[str, str], ...]

    def names(self, quote: bool) -> str:
        return ", ".join(
            f'"{c}"' if quote and c == "user" else c for c, _ in self.columns
        )


TABLES = (
    _Table("conversations", (
        ("id", _SAME), ("user", _TEXT), ("title", _TEXT), ("created_at", _TIME),
        ("updated_at", _TIME), ("system_prompt", _TEXT), ("web", _BOOL), ("model", _TEXT),
    )),
    _Table("turns", (
        ("id", _SAME), ("conversation_id", _SAME), ("position", _SAME), ("question", _TEXT),
        ("answer", _TEXT), ("thoughts", _TEXT), ("model", _TEXT), ("state", _SAME),
        ("note", _TEXT), ("finish_reason", _TEXT), ("input_tokens", _SAME),
        ("output_tokens", _SAME), ("thoughts_tokens", _SAME), ("started_at", _TIME),
        ("duration_ms", _SAME), ("incomplete", _BOOL), ("replay", _TEXT),
        ("sources", _TEXT), ("owner", _TEXT),
    )),
    _Table("token_usage", (
        ("id", _SAME), ("user", _TEXT), ("turn_id", _SAME), ("model", _TEXT),
        ("started_at", _TIME), ("input_tokens", _SAME), ("output_tokens", _SAME),
        ("thoughts_tokens", _SAME), ("holder", _TEXT),
    )),
)  # fmt: skip

_LEDGER_SUMS = (
    "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
    "COALESCE(SUM(thoughts_tokens), 0) FROM token_usage"
)


def _convert(kind: str, value: object) -> object:
    if value is None or kind == _SAME:
        return value
    if kind == _TEXT:
        return _enc(str(value))
    if kind == _TIME:
        return parse_time(str(value))
    return bool(value)


def _read_source(path: Path) -> tuple[dict[str, list[tuple[object, ...]]], tuple[int, ...]]:
    """Every row to copy, by table, and the ledger's token sums."""
    if not path.is_file():
        raise StoreError(f"Cannot copy {path}: no such file; give the SQLite store's path.")
    try:
        conn = open_database(path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(explain(path, exc)) from exc
    try:
        migrate(conn)  # the copy reads the current schema
        rows = {
            table.name: [
                tuple(_convert(kind, v) for (_, kind), v in zip(table.columns, row, strict=True))
                for row in conn.execute(
                    f"SELECT {table.names(True)} FROM {table.name} ORDER BY id"
                )
            ]
            for table in TABLES
        }
        sums = tuple(int(v) for v in conn.execute(_LEDGER_SUMS).fetchone())
    except sqlite3.Error as exc:
        raise StoreError(explain(path, exc)) from exc
    finally:
        conn.close()
    return rows, sums


async def _write(
    conn: Conn, rows: dict[str, list[tuple[object, ...]]], sums: tuple[int, ...], url: str
) -> None:
    async with conn.transaction():
        # No server may write while the copy runs, nor between the check and the copy.
        await conn.execute("LOCK TABLE conversations, turns, token_usage IN EXCLUSIVE MODE")
        for table in TABLES:
            cursor = await conn.execute(f"SELECT COUNT(*) FROM {table.name}")
            found = await cursor.fetchone()
            if found and found[0]:
                raise StoreError(
                    f"Cannot copy into {describe(url)}: it already holds {found[0]} "
                    f"{table.name} rows; copy into an empty database."
                )
        for table in TABLES:
            columns = table.names(True)
            async with conn.cursor().copy(
                f"COPY {table.name} ({columns}) FROM STDIN".encode()
            ) as copy:
                for row in rows[table.name]:
                    await copy.write_row(row)
            # New rows are numbered after the copied ones.
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"COALESCE(MAX(id), 0) + 1, false) FROM {table.name}".encode()
            )
        for table in TABLES:
            cursor = await conn.execute(f"SELECT COUNT(*) FROM {table.name}".encode())
            counted = await cursor.fetchone()
            if counted is None or counted[0] != len(rows[table.name]):
                raise StoreError(
                    f"Copy into {describe(url)} rolled back: {table.name} has "
                    f"{counted and counted[0]} rows there, {len(rows[table.name])} here."
                )
        cursor = await conn.execute(_LEDGER_SUMS)
        copied = await cursor.fetchone()
        if copied is None or tuple(int(cast(int, v)) for v in copied) != sums:
            raise StoreError(
                f"Copy into {describe(url)} rolled back: the token ledger sums differ."
            )


async def copy_store(
    source: Path, url: str, report: Callable[[str], None] = print
) -> dict[str, int]:
    """Copy the SQLite store at ``source`` into the empty PostgreSQL database at ``url``.

    Returns:
        The rows copied, by table.

    Raises:
        StoreError: the source cannot be read, the target cannot be reached or is not
            empty, or the copy failed (the target is left as it was).
    """
    rows, sums = _read_source(source)
    conn = await _connect(url)
    try:
        await migrate_postgres(conn)
        await _write(conn, rows, sums, url)
    except psycopg.Error as exc:
        text = " ".join(str(exc).split()).rstrip(".")[:300]
        raise StoreError(
            f"Copy into {describe(url)} failed and was rolled back: {text}."
        ) from exc
    finally:
        await conn.close()
    counts = {table: len(table_rows) for table, table_rows in rows.items()}
    for table, count in counts.items():
        report(f"{table}: {count} rows copied, {count} counted in the target")
    report(f"Copied {source} into {describe(url)}.")
    return counts
