"""SQLite plumbing the store and its migrations share: opening a file, transactions, times.

Contract:
- :func:`open_database` creates the folder (mode 0700) and the file (mode 0600), runs
  ``PRAGMA quick_check`` (a damaged file raises :class:`~kindlessh._errors.StoreError`),
  and sets WAL, ``busy_timeout`` (:data:`BUSY_TIMEOUT_MS`), ``foreign_keys=ON`` and
  ``synchronous=NORMAL``; the connection is in autocommit mode, for one thread.
  :func:`explain` words any failure to open as one line naming the file and the fix.
- :func:`transaction` is one write transaction (``BEGIN IMMEDIATE``), rolled back if
  its body raises.
- Times are stored as UTC ISO-8601 strings with microseconds (:func:`stamp`: fixed width,
  so string order is time order) and read back aware (:func:`parse_time`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ._errors import StoreError

BUSY_TIMEOUT_MS = 5000


def utcnow() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    """``when`` as stored: UTC, microseconds, fixed width."""
    if when.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; pass an aware one")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """A stored time back as an aware datetime."""
    return datetime.fromisoformat(text)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; rolled back if the body raises.

    Strategy: BEGIN IMMEDIATE takes the write lock at the start, where busy_timeout
    applies. A deferred transaction that reads first and then writes can fail at once with
    SQLITE_BUSY when another connection wrote in between; waiting cannot fix that case.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may already have rolled back by itself (a full disk, say).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700; leave existing ones."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


_CANNOT_WRITE = (
    "kindlessh must be able to write it and its folder (the -wal and -shm files go "
    "beside it): check their owner and mode, or set [storage] path"
)
_DAMAGED = (
    "the file is damaged; move it away (a new one is made at the next start) or put "
    "back a backup"
)


def explain(path: Path, exc: BaseException) -> str:
    """One line for the owner: what went wrong with the store at ``path``, and the fix."""
    text = str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
    lowered = text.lower()
    if isinstance(exc, OSError) or any(
        word in lowered for word in ("readonly", "read-only", "unable to open", "permission")
    ):
        hint = _CANNOT_WRITE
    elif any(word in lowered for word in ("not a database", "malformed", "corrupt")):
        hint = _DAMAGED
    else:
        hint = "see the server's log"
    return f"Cannot open the conversation store {path}: {text.rstrip('.')}; {hint}."


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: refuse a damaged file before anything is written to it.

    Strategy: quick_check reads every page but skips the index-content checks of
    integrity_check, so it is linear in the file and takes well under a second for a
    chat history; it runs once, at start, on the store's own thread.
    """
    rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)").fetchall()]
    if rows != ["ok"]:
        raise StoreError(
            f"Cannot open the conversation store {path}: quick_check found "
            f"{' '.join(rows)[:120]!r}; {_DAMAGED}."
        )


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating) the database, check it and set the pragmas; runs on the store's
    thread."""
    _make_dirs(path.parent)
    # Create the file ourselves so it is private from the first byte; SQLite gives its
    # -wal and -shm files the same mode as the database.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _quick_check(conn, path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"The conversation store {path} cannot use WAL mode (got {mode!r}); "
                "put it on a local disk."
            )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn
