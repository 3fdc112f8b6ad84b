"""One-time invite codes: how a new device (a Kindle) enrols its key without copying it.

Contract:
- :class:`Invites` keeps the pending invites in one JSON file (mode 0600), written by
  ``kindlessh invite`` and read and consumed by the running server. Every
  read-modify-write holds an exclusive ``flock`` on a lock file beside it and replaces
  the file atomically, so the two never lose each other's changes.
- A code is shown once, when it is made, and stored only as a salted scrypt hash. At most
  one invite is pending per name: a new one replaces the old. Invites expire; expired
  ones are dropped whenever the file is written.
- :meth:`Invites.redeem` checks a typed code (in constant time, and outside the lock:
  scrypt is slow; a name with no invite costs the same scrypt) and, when it is right and
  the invite is still the same one, runs the caller's enrolment and consumes the invite
  in one locked step: a code works once, and an enrolment that fails leaves the invite
  standing. Counting wrong tries is the caller's part. Codes are typed on an on-screen
  keyboard, so case, spaces and hyphens in what is typed do not matter.
- One :class:`Invites` lives as long as the server: :meth:`Invites.pending` reads the
  file again only when it has changed (:mod:`._watched`), so an invite made by
  ``kindlessh invite`` while the server runs counts at the next login. Every
  read-modify-write reads the file afresh under the lock.
- Every refusal raises :class:`~kindlessh._errors.UserError` with a message for the owner.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ._errors import UserError
from ._files import write_private
from ._watched import Watched

# Lower-case letters and digits without look-alikes (i l o 0 1): 31 symbols.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
CODE_LENGTH = 9  # 9 * log2(31) = 44.6 bits
CODE_BITS = CODE_LENGTH * math.log2(len(ALPHABET))
DEFAULT_TTL = timedelta(minutes=15)
Redeemed = Literal["ok", "wrong", "gone"]
MAX_TTL = timedelta(days=7)
# scrypt with 16 MiB of memory: a leaked file does not give the codes away cheaply, and
# one check costs a few tens of milliseconds (the server runs it off the event loop).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_TTL = re.compile(r"(\d{1,6})\s*([smhd]?)")
_UNITS = {"s": 1, "": 60, "m": 60, "h": 3600, "d": 86400}


def new_code() -> str:
    """A fresh random code of :data:`CODE_LENGTH` symbols from :data:`ALPHABET`."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalise(typed: str) -> str:
    """What a person typed, as a code: lower case, without spaces and hyphens."""
    return re.sub(r"[\s\-]", "", typed).lower()


def parse_ttl(text: str) -> timedelta:
    """``15m``, ``2h``, ``1d``, ``900s`` (a bare number is minutes) as a duration.

    Raises:
        UserError: not such a duration, zero, or longer than a week.
    """
    found = _TTL.fullmatch(text.strip().lower())
    if found is None:
        raise UserError(f"--ttl {text!r}: give a duration such as 15m, 2h or 1d")
    ttl = timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    if not timedelta(0) < ttl <= MAX_TTL:
        raise UserError(f"--ttl {text!r}: give a duration above zero and at most 7 days")
    return ttl


def _hash(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(code.encode(), salt=salt, **_SCRYPT)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Invite:
    """A pending invite (never its code)."""

    name: str
    profile: str | None
    created: datetime
    expires: datetime

    def left(self, now: datetime) -> timedelta:
        """Time until it expires (zero or less once it has)."""
        return self.expires - now


class Invites:
    """The pending invites in ``path`` (see the module contract)."""

    @classmethod
    def beside(cls, users_dir: Path) -> Invites:
        """The invites of a server whose users live in ``users_dir``: ``invites.json``
        next to that folder (``keys/invites.json`` by default)."""
        return cls(users_dir.parent / "invites.json")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: Watched[dict[str, Any]] = Watched(path, self._parse, {})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The file's records, under the lock; changes to the dict are written back."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            before = json.dumps(records, sort_keys=True)
            yield records
            if json.dumps(records, sort_keys=True) != before:
                self._write(records)
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, Any]:
        """The records as the file holds them now (under the lock: never from memory)."""
        try:
            return self._parse(self.path)
        except FileNotFoundError:
            return {}

    def _parse(self, path: Path, _st: object = None) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the invites in {path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _write(self, records: dict[str, Any]) -> None:
        write_private(self.path, json.dumps(records, indent=1, sort_keys=True))

    @staticmethod
    def _invite(name: str, record: dict[str, Any]) -> Invite | None:
        try:
            return Invite(
                name=name,
                profile=record.get("profile"),
                created=datetime.fromisoformat(record["created"]),
                expires=datetime.fromisoformat(record["expires"]),
            )
        except (KeyError, TypeError, ValueError):
            return None  # a damaged record invites nobody

    @classmethod
    def _prune(cls, records: dict[str, Any], now: datetime) -> None:
        for name in list(records):
            invite = cls._invite(name, records[name])
            if invite is None or invite.left(now) <= timedelta(0):
                del records[name]

    def create(
        self, name: str, *, profile: str | None, ttl: timedelta, now: datetime
    ) -> tuple[str, Invite]:
        """Make an invite for ``name``; returns its code (shown once) and the invite."""
        code = new_code()
        salt = secrets.token_bytes(16)
        invite = Invite(name, profile, now, now + ttl)
        with self._locked() as records:
            self._prune(records, now)
            records[name] = {
                "salt": base64.b64encode(salt).decode(),
                "hash": base64.b64encode(_hash(code, salt)).decode(),
                "profile": profile,
                "created": _stamp(now),
                "expires": _stamp(invite.expires),
            }
        return code, invite

    def pending(self, name: str, now: datetime) -> Invite | None:
        """The unexpired invite for ``name``, if any (a read; nothing is written).

        Raises:
            UserError: the file cannot be read or is not JSON.
        """
        try:
            record = self._seen.get().get(name)
        except FileNotFoundError:
            record = None  # removed between the stat and the read
        except OSError as exc:
            raise UserError(f"cannot read the invites in {self.path}: {exc}") from exc
        invite = self._invite(name, record) if isinstance(record, dict) else None
        return invite if invite is not None and invite.left(now) > timedelta(0) else None

    def any_pending(self, now: datetime) -> bool:
        """True while some name has an unexpired invite (a read; nothing is written).

        Raises:
            UserError: the file cannot be read or is not JSON.
        """
        try:
            records = self._seen.get()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise UserError(f"cannot read the invites in {self.path}: {exc}") from exc
        for name, record in records.items():
            invite = self._invite(name, record) if isinstance(record, dict) else None
            if invite is not None and invite.left(now) > timedelta(0):
                return True
        return False

    def redeem(
        self,
        name: str,
        typed: str,
        now: datetime,
        enrol: Callable[[Invite], None] | None = None,
    ) -> tuple[Redeemed, Invite | None]:
        """Check ``typed`` against ``name``'s invite; if right, run ``enrol`` and consume it.

        Returns:
            ``("ok", invite)``; ``("wrong", None)`` for a wrong code; ``("gone", None)``
            when no invite is pending (expired, revoked, used, replaced meanwhile).

        Raises:
            Whatever ``enrol`` raises; the invite then stays.

        Slow on purpose (scrypt): call it off the event loop.
        """
        code = normalise(typed)
        with self._locked() as records:
            self._prune(records, now)
            record = records.get(name)
        invite = self._invite(name, record) if isinstance(record, dict) else None
        if invite is None or record is None:
            # The same scrypt as a real check: how long the answer takes must not tell
            # whether the name had an invite.
            _hash(code, secrets.token_bytes(16))
            return "gone", None
        try:
            salt = base64.b64decode(record["salt"])
            stored = base64.b64decode(record["hash"])
        except (KeyError, TypeError, ValueError):
            return "gone", None
        if not hmac.compare_digest(_hash(code, salt), stored):
            return "wrong", None
        with self._locked() as records:
            if records.get(name) != record:
                return "gone", None
            if enrol is not None:
                enrol(invite)
            del records[name]
        return "ok", invite

    def revoke(self, name: str) -> bool:
        """Drop ``name``'s invite; False if there was none."""
        with self._locked() as records:
            return records.pop(name, None) is not None

    def all(self, now: datetime) -> list[Invite]:
        """Every pending invite, soonest to expire first."""
        with self._locked() as records:
            self._prune(records, now)
            found = [self._invite(name, r) for name, r in records.items()]
        return sorted((i for i in found if i is not None), key=lambda i: i.expires)
