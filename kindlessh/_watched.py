"""A file a running server reads often and others change now and then.

Contract:
- :func:`file_stamp` is what tells one version of a file from the next: modification
  time, size, inode (an atomic replace makes a new one) and mode (a ``chmod``).
- :class:`Watched` holds what ``read`` made of a file and calls ``read`` again only when
  the file's stamp has changed; each :meth:`Watched.get` costs one ``stat``. A missing
  file is ``absent`` (and read again once it appears). When ``read`` raises, nothing is
  kept: the next call reads again, and the error reaches the caller each time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
Stamp = tuple[int, int, int, int]


def file_stamp(st: os.stat_result) -> Stamp:
    """One version of a file: (mtime in ns, size, inode, mode)."""
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


class Watched(Generic[T]):
    """What ``read(path, stat)`` returns for ``path``, re-read when the file changes.

    Raises (from :meth:`get`): ``OSError`` other than a missing file, and whatever
    ``read`` raises.
    """

    def __init__(
        self, path: Path, read: Callable[[Path, os.stat_result], T], absent: T
    ) -> None:
        self.path = path
        self._read = read
        self._absent = absent
        self._stamp: Stamp | None = None
        self._value = absent
        self.reads = 0  # how many times the file was read (for tests)

    def get(self) -> T:
        """The value for the file as it is now."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._value = None, self._absent
            return self._absent
        stamp = file_stamp(st)
        if stamp != self._stamp:
            # Stat first, read second: the value is never older than its stamp, so a
            # change made in between is read again next time.
            value = self._read(self.path, st)
            self.reads += 1
            self._stamp, self._value = stamp, value
        return self._value
