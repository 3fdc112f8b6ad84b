"""Optional passwords, for clients that cannot use a key: stored only as scrypt hashes.

Contract:
- One file per user in a folder (``passwords`` beside ``[server] users_dir``; folder 0700,
  files 0600, written atomically), holding ``scrypt$N$r$p$salt$hash``: never the password.
- :meth:`Passwords.check` compares in constant time and is slow on purpose (about 50 ms
  of scrypt): the server runs it off the event loop, and failed logins are limited and
  penalised like failed keys. A name without a password costs the same scrypt (against
  a decoy hash), so how long a refusal takes does not tell who has one.
- A password shorter than :data:`MIN_LENGTH` is refused. Refusals raise
  :class:`~kindlessh._errors.UserError` with a message for the owner.
- The server accepts passwords only when ``[server] password_auth`` is true (off by
  default); these files alone never let anyone in.
- One :class:`Passwords` can live as long as the server: a user's file is read again
  only when it has changed (:mod:`._watched`), so ``kindlessh user passwd`` needs no
  restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ._errors import UserError
from ._files import write_private
from ._users import check_name, valid_name
from ._watched import Watched

MIN_LENGTH = 10
_N, _R, _P = 2**14, 8, 1


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
        maxmem=256 * 1024 * 1024, dklen=32,
    )


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$salt$hash`` (base64 parts)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (False for anything malformed)."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def _trusted(path: Path, st: os.stat_result) -> str | None:
    """The stored hash in ``path``; None when group or others may write the file."""
    return None if st.st_mode & 0o022 else path.read_text()


class Passwords:
    """The password files of a server whose users live in ``users_dir``."""

    def __init__(self, users_dir: Path) -> None:
        self.root = users_dir.parent / "passwords"
        self._watched: dict[str, Watched[str | None]] = {}
        # Same parameters as a real hash, random salt and digest: checking against it
        # costs one scrypt and never matches.
        b64 = base64.b64encode
        salt, digest = secrets.token_bytes(16), secrets.token_bytes(32)
        self._decoy = f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def has(self, name: str) -> bool:
        """True when ``name`` has a password (an invalid name never has one)."""
        return valid_name(name) and (self.root / name).is_file()

    def set(self, name: str, password: str) -> None:
        """Give ``name`` this password (replacing any other).

        Raises:
            UserError: a bad name, a password that is too short, or the file cannot be
                written.
        """
        path = self._path(name)
        if len(password) < MIN_LENGTH:
            raise UserError(f"a password must have at least {MIN_LENGTH} characters")
        try:
            write_private(path, hash_password(password) + "\n")
        except OSError as exc:
            raise UserError(f"{path}: cannot write it ({exc.strerror or exc})") from None

    def remove(self, name: str) -> bool:
        """Take ``name``'s password away; False if there was none."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise UserError(f"cannot remove the password of {name}: {exc}") from None
        return True

    def check(self, name: str, password: str) -> bool:
        """True when ``password`` is ``name``'s. A file others may write is not trusted."""
        if not self.has(name):
            self._watched.pop(name, None)  # only files that exist are watched
            verify_password(password, self._decoy)
            return False
        watched = self._watched.get(name)
        if watched is None:
            watched = self._watched[name] = Watched(self.root / name, _trusted, None)
        try:
            stored = watched.get()
        except OSError:
            return False
        return stored is not None and verify_password(password, stored)
