"""Private files written whole: keys, passwords and invites that a running server reads.

Contract: :func:`write_private` creates the folder (0700) if needed, writes ``text`` to a
temporary file of mode 0600 beside ``path``, flushes it to disk and renames it over
``path``, so a reader sees the old file or the new one, never a torn one, and nobody
else can read either. On failure nothing is left behind and the ``OSError`` is raised.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600 (see the module contract)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # an existing leftover keeps its mode through O_CREAT
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
