"""Host key and authorized keys on disk.

Contract:
- :func:`load_or_create_host_key` returns the server's Ed25519 host key, creating it on
  first run with mode 0600 (and its folder with 0700). An existing key that others can
  read, that cannot be read, or that is not a private key stops the start with a
  :class:`~kindlessh._errors.ConfigError` naming the file and the fix.
- :func:`load_or_create_rsa_host_key` does the same for the RSA 3072 host key kept next
  to it (:func:`rsa_host_key_path`), for clients without Ed25519; a key there that is not
  RSA is refused. :attr:`HostKey.keypair` signs with rsa-sha2-256/512 only, never ssh-rsa.
- :class:`AuthorizedKeys` reads an OpenSSH ``authorized_keys`` file and re-reads it when
  it changes, so a key added while the server runs works on the next login; a strict
  one (a per-user file) is ignored while group or others may write it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ._errors import ConfigError
from ._watched import Stamp, file_stamp

RSA_KEY_BITS = 3072
# Host key algorithms offered for an RSA key: SHA-2 only. asyncssh would also offer
# ssh-rsa (SHA-1 signatures, disabled by OpenSSH since 8.8) and the ssh.com variants.
RSA_HOST_KEY_ALGS = (b"rsa-sha2-256", b"rsa-sha2-512")


@dataclass(frozen=True)
class HostKey:
    """A loaded host key; ``created`` is True when this start made it."""

    key: asyncssh.SSHKey
    path: Path
    created: bool

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint as OpenSSH prints it."""
        return str(self.key.get_fingerprint("sha256"))

    @property
    def label(self) -> str:
        """The key type as OpenSSH names it in fingerprints: ``ED25519``, ``RSA``."""
        return self.key.get_algorithm().removeprefix("ssh-").upper()

    @property
    def keypair(self) -> asyncssh.SSHKeyPair:
        """The key for ``server_host_keys``; an RSA key offers rsa-sha2-256/512 only."""
        (pair,) = asyncssh.load_keypairs([self.key])
        if self.key.get_algorithm() == "ssh-rsa":
            # asyncssh has no server-side HostKeyAlgorithms option: listen() offers
            # each key pair's host_key_algorithms, so trim that list here.
            pair.host_key_algorithms = [
                alg for alg in pair.host_key_algorithms if alg in RSA_HOST_KEY_ALGS
            ]
        return pair


def rsa_host_key_path(host_key: Path) -> Path:
    """Where the RSA host key lives, next to the Ed25519 ``host_key``.

    ``ssh_host_ed25519_key`` -> ``ssh_host_rsa_key`` (OpenSSH's names); any other name
    gets ``_rsa`` appended (``host_key`` -> ``host_key_rsa``).
    """
    name = host_key.name
    new = name.replace("ed25519", "rsa") if "ed25519" in name else name + "_rsa"
    return host_key.with_name(new)


def load_or_create_host_key(path: Path) -> HostKey:
    """Load the host key at ``path``, creating an Ed25519 key there if it is missing.

    Raises:
        ConfigError: the key cannot be created or read, is readable by group or others,
            or is not a valid private key.
    """
    return _load_or_create(path, "ssh-ed25519", f"[server] host_key {path}")


def load_or_create_rsa_host_key(host_key: Path) -> HostKey:
    """Load the RSA host key next to ``host_key``, creating an RSA 3072 key if missing.

    Raises:
        ConfigError: as :func:`load_or_create_host_key`, or the file holds another type.
    """
    path = rsa_host_key_path(host_key)
    where = f"RSA host key {path} (next to [server] host_key)"
    loaded = _load_or_create(path, "ssh-rsa", where)
    if loaded.key.get_algorithm() != "ssh-rsa":
        raise ConfigError(f"{where}: not an RSA key; move it away to get a new one")
    return loaded


def _load_or_create(path: Path, algorithm: str, where: str) -> HostKey:
    if not path.exists():
        options = {"key_size": RSA_KEY_BITS} if algorithm == "ssh-rsa" else {}
        key = asyncssh.generate_private_key(algorithm, comment="kindlessh host key", **options)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Strategy: create with 0600 in one step; write_private_key() would use the
            # umask (often 0644) and leave a window where the key is world-readable.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.export_private_key("openssh"))
            key.write_public_key(str(path) + ".pub")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create the host key ({exc.strerror})") from None
        return HostKey(key, path, created=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the host key ({exc.strerror})") from None
    if mode & 0o077:
        raise ConfigError(
            f"{where}: the host key is readable by other users (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = asyncssh.read_private_key(str(path))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the host key ({exc.strerror})") from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(f"{where}: not a usable private key ({exc})") from None
    return HostKey(key, path, created=False)


class AuthorizedKeys:
    """An OpenSSH ``authorized_keys`` file, re-read whenever it changes.

    ``get()`` returns the parsed keys, or None when the file is missing or holds no key.
    A file that fails to parse keeps the last good keys and records the problem in
    ``error`` (the server must not lock everyone out because of one bad edit). With
    ``strict``, a file that group or others may write is not trusted at all (OpenSSH
    StrictModes): ``get()`` is None and ``error`` says how to fix it.
    """

    def __init__(self, path: Path, *, strict: bool = False) -> None:
        self.path = path
        self.strict = strict
        self.error: str | None = None
        self._stamp: Stamp | None = None
        self._keys: asyncssh.SSHAuthorizedKeys | None = None
        self._count = 0

    def _read(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self._keys, self._count = None, None, 0
            return
        stamp = file_stamp(st)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if self.strict and st.st_mode & 0o022:
            mode = stat.S_IMODE(st.st_mode)
            self.error = (
                f"{self.path}: other users may change it (mode {mode:04o}), so its keys "
                f"are ignored; run: chmod 600 {self.path}"
            )
            self._keys, self._count = None, 0
            return
        try:
            text = self.path.read_text(encoding="utf-8")
            lines = [ln for ln in text.splitlines() if ln.strip() and ln.lstrip()[0] != "#"]
            keys = asyncssh.import_authorized_keys(text) if lines else None
        except (OSError, UnicodeDecodeError, ValueError, asyncssh.KeyImportError) as exc:
            self.error = f"{self.path}: {exc}"
            return
        self.error = None
        self._keys, self._count = keys, len(lines)

    def get(self) -> asyncssh.SSHAuthorizedKeys | None:
        """The current keys, or None when there are none."""
        self._read()
        return self._keys

    def count(self) -> int:
        """How many key lines the file holds now."""
        self._read()
        return self._count
