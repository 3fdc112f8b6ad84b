"""Users: one OpenSSH ``authorized_keys`` file per user under ``[server] users_dir``.

Contract:
- A user name is 1-32 characters of ``a-z 0-9 . _ -`` and does not start with ``.`` or
  ``-`` (:func:`check_name`); it is also the file name, so no name can reach outside the
  folder. The folder is created with mode 0700 and every file is written with 0600,
  atomically (a running server never reads half a file).
- :class:`Users` adds, lists and removes users and sets a user's screen profile by
  rewriting the ``environment="KINDLESSH_PROFILE=..."`` option on each of their keys.
  Lines the commands do not understand (comments, hand edits) are kept as they are.
  Every refusal raises :class:`~kindlessh._errors.UserError` with a message for the owner.
- :meth:`Users.authorized` is the server's view: the keys of a user that has a file,
  re-read when the file changes, so ``user add`` needs no restart. A file others can
  write is not trusted (OpenSSH StrictModes).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ._errors import UserError
from ._files import write_private
from ._keys import AuthorizedKeys

PROFILES = ("eink", "smooth")
PROFILE_VAR = "KINDLESSH_PROFILE"
_NAME = re.compile(r"[a-z0-9_][a-z0-9._-]{0,31}")


def valid_name(name: str) -> bool:
    """True when ``name`` can be a user name (and so a file name in the folder)."""
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it can be a user name.

    Raises:
        UserError: it cannot; the message gives the rule.
    """
    if not valid_name(name):
        shown = name[:40].encode("ascii", "backslashreplace").decode()
        raise UserError(
            f"'{shown}' cannot be a user name: use 1 to 32 of a-z, 0-9, '.', '_' and '-', "
            "not starting with '.' or '-'"
        )
    return name


def _scan(text: str, stops: str) -> list[str]:
    """Split ``text`` at characters in ``stops`` that are outside double quotes."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2  # an escaped character inside quotes, e.g. \"
            continue
        if c == '"':
            quoted = not quoted
        elif c in stops and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True)
class KeyEntry:
    """One key line: its options (``environment="..."``, ``from="..."``) and the key."""

    options: tuple[str, ...]
    key: asyncssh.SSHKey
    key_text: str

    @classmethod
    def parse(cls, line: str, where: str) -> KeyEntry:
        """Parse one ``authorized_keys`` line.

        Raises:
            UserError: the line is not a public key with valid options.
        """
        line = line.strip()
        if "PRIVATE KEY" in line:
            raise UserError(
                f"{where}: that is a private key; give the public key (the .pub file)"
            )
        options: tuple[str, ...] = ()
        try:
            key, key_text = asyncssh.import_public_key(line), line
        except (asyncssh.KeyImportError, ValueError):
            first = _scan(line, " \t")[0]  # options end at the first unquoted blank
            options = tuple(o for o in _scan(first, ",") if o)
            key_text = line[len(first) :].strip()
            try:
                key = asyncssh.import_public_key(key_text)
            except (asyncssh.KeyImportError, ValueError):
                raise UserError(
                    f"{where}: not an OpenSSH public key line (expected something like "
                    "'ssh-ed25519 AAAA... me@laptop', optionally after options)"
                ) from None
        try:
            # asyncssh's own parser has the last word on the options.
            asyncssh.import_authorized_keys(line)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise UserError(f"{where}: the key's options are not valid ({exc})") from None
        return cls(options, key, key_text)

    @property
    def fingerprint(self) -> str:
        """``ED25519 SHA256:...`` as OpenSSH prints it."""
        label = self.key.get_algorithm().removeprefix("ssh-").upper()
        return f"{label} {self.key.get_fingerprint('sha256')}"

    @property
    def comment(self) -> str:
        """The key's comment (often user@host), or empty."""
        comment = self.key.get_comment()
        return comment if isinstance(comment, str) else ""

    @property
    def profile(self) -> str | None:
        """The screen profile its ``environment=`` option sets, if any."""
        for option in self.options:
            if (found := _profile_of(option)) is not None:
                return found
        return None

    def with_profile(self, profile: str) -> KeyEntry:
        """The same key with its profile option replaced by ``profile``."""
        kept = tuple(o for o in self.options if _profile_of(o) is None)
        return KeyEntry((*kept, f'environment="{PROFILE_VAR}={profile}"'), self.key, self.key_text)

    def line(self) -> str:
        """The entry as one ``authorized_keys`` line."""
        return f"{','.join(self.options)} {self.key_text}" if self.options else self.key_text


def _profile_of(option: str) -> str | None:
    name, _, value = option.partition("=")
    if name.strip().lower() != "environment":
        return None
    var, _, profile = value.strip().strip('"').partition("=")
    return profile if var == PROFILE_VAR else None


def parse_keys(text: str, where: str) -> list[KeyEntry]:
    """Every key in ``text`` (``authorized_keys`` lines; blanks and ``#`` lines skipped).

    Raises:
        UserError: a line is not a public key, or there is no key at all.
    """
    entries = [
        KeyEntry.parse(line, f"{where} line {n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise UserError(f"{where}: no public key found")
    return entries


@dataclass(frozen=True)
class UserInfo:
    """What ``user list`` shows of one user."""

    name: str
    keys: list[KeyEntry]
    other_lines: int

    @property
    def profile(self) -> str:
        """The profile the keys set: one name, ``mixed``, or ``default``."""
        found = {k.profile for k in self.keys}
        if len(found) > 1:
            return "mixed"
        only = found.pop() if found else None
        return only or "default"


class Users:
    """The folder of per-user ``authorized_keys`` files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._watched: dict[str, AuthorizedKeys] = {}

    def path(self, name: str) -> Path:
        """The keys file of user ``name`` (checked, so it stays inside the folder)."""
        return self.root / check_name(name)

    def names(self) -> list[str]:
        """Every user, sorted."""
        try:
            found = [p.name for p in self.root.iterdir() if p.is_file()]
        except OSError:
            return []
        return sorted(n for n in found if valid_name(n))

    def _lines(self, name: str) -> list[str | KeyEntry]:
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"there is no user '{name}' (see: kindlessh user list)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read it ({exc})") from None
        lines: list[str | KeyEntry] = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                with contextlib.suppress(UserError):
                    lines.append(KeyEntry.parse(line, f"{path} line {n}"))
                    continue
            lines.append(line)
        return lines

    def _write(self, name: str, lines: list[str | KeyEntry]) -> None:
        path = self.path(name)
        text = "".join((x if isinstance(x, str) else x.line()) + "\n" for x in lines)
        try:
            write_private(path, text)
        except OSError as exc:
            raise UserError(f"{path}: cannot write it ({exc.strerror or exc})") from None

    def info(self, name: str) -> UserInfo:
        """One user's keys.

        Raises:
            UserError: no such user, or the file cannot be read.
        """
        lines = self._lines(name)
        keys = [x for x in lines if isinstance(x, KeyEntry)]
        others = sum(1 for x in lines if isinstance(x, str) and x.strip() and x[0] != "#")
        return UserInfo(name, keys, others)

    def add(self, name: str, keys: list[KeyEntry], profile: str | None = None) -> list[KeyEntry]:
        """Give user ``name`` these keys, creating the user if needed.

        Returns:
            The keys actually added (one the user already has is skipped).

        Raises:
            UserError: a bad name, or the file cannot be written.
        """
        path = self.path(name)
        lines = self._lines(name) if path.exists() else []
        have = {x.key.public_data for x in lines if isinstance(x, KeyEntry)}
        added = []
        for entry in keys:
            if entry.key.public_data in have:
                continue
            have.add(entry.key.public_data)
            added.append(entry.with_profile(profile) if profile else entry)
        if added or not path.exists():
            self._write(name, [*lines, *added])
        return added

    def remove(self, name: str) -> UserInfo:
        """Delete user ``name`` and their keys; returns what was removed.

        Raises:
            UserError: no such user, or the file cannot be deleted.
        """
        info = self.info(name)
        try:
            self.path(name).unlink()
        except OSError as exc:
            raise UserError(f"{self.path(name)}: cannot delete it ({exc.strerror})") from None
        return info

    def set_profile(self, name: str, profile: str) -> int:
        """Make every key of user ``name`` choose ``profile``; returns how many keys.

        Raises:
            UserError: no such user, an unknown profile, or the file cannot be written.
        """
        if profile not in PROFILES:
            raise UserError(f"unknown profile '{profile}': use one of {', '.join(PROFILES)}")
        lines = [x.with_profile(profile) if isinstance(x, KeyEntry) else x
                 for x in self._lines(name)]
        self._write(name, lines)
        return sum(1 for x in lines if isinstance(x, KeyEntry))

    def authorized(self, name: str) -> AuthorizedKeys | None:
        """The server's view of user ``name``: their keys file, or None without one.

        The returned object re-reads the file when it changes; its ``get()`` is None when
        the file holds no usable key (or others may write it).
        """
        if not valid_name(name) or not (self.root / name).is_file():
            self._watched.pop(name, None)
            return None
        watched = self._watched.get(name)
        if watched is None:
            watched = self._watched[name] = AuthorizedKeys(self.root / name, strict=True)
        return watched
