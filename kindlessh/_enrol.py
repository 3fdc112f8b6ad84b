"""Enrolment by invite code: how a device registers its key over keyboard-interactive.

Contract:
- One :class:`Enrolment` per connection. :meth:`Enrolment.begin` is told each login
  name the client tries; while ``kindlessh invite NAME`` has an invite pending for it,
  :meth:`Enrolment.offer` remembers the keys the client offers (at most
  :data:`MAX_OFFERED`, each once), and :meth:`Enrolment.asks` says keyboard-interactive
  may be offered: only then, and only for :data:`MAX_CODE_TRIES` wrong codes.
- :meth:`Enrolment.challenge` asks for the code (naming the fingerprint of the first
  key offered), or carries the line that refuses: no key was offered, or the invite is
  gone (expired or revoked since the login began).
- :meth:`Enrolment.answer` checks the typed code (off the event loop: scrypt) and
  returns a :class:`Reply`: accepted (the first key offered is now the user's, with the
  invite's profile), try again, or a refusal line to end the connection with. After an
  accepted code, :attr:`Enrolment.greeting` is the line the chat opens with and
  :attr:`Enrolment.env` carries the invite's profile for this first login.
- The code is what authorises the key: SSH clients name a key before signing with it,
  and a refused key is never signed, so the key is registered as offered; only a device
  holding its private key can log in with it afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncssh

from ._errors import UserError
from ._invites import Invite, Invites
from ._users import PROFILE_VAR, KeyEntry, Users, valid_name

log = logging.getLogger("kindlessh.server")

MAX_CODE_TRIES = 3
MAX_OFFERED = 16  # keys remembered per connection
GONE = (
    "kindlessh: the invite for {name} has expired or was cancelled; ask the owner "
    "for a new one"
)
NO_CLIENT_KEY = (
    "kindlessh: an invite is waiting for you, but your SSH client offered no key to "
    "register. Make one, then connect again:\n"
    "  Dropbear: dropbearkey -t ed25519 -f ~/.ssh/id_dropbear\n"
    "  OpenSSH:  ssh-keygen -t ed25519"
)
NO_KEY_OFFERED = (
    "kindlessh: no key offered; make one (ssh-keygen -t ed25519 or "
    "dropbearkey -t ed25519 -f ~/.ssh/id_dropbear) and connect again"
)
NOT_STORED = (
    "kindlessh: the server could not register your key; the invite still "
    "stands (the owner can see why in its log)"
)
TOO_MANY = "kindlessh: too many wrong invite codes"

Challenge = tuple[str, str, str, tuple[tuple[str, bool], ...]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Reply:
    """What a typed code did: ``accepted``, or a ``refusal`` that ends the connection;
    neither means the client may try again."""

    accepted: bool = False
    refusal: str | None = None


class Enrolment:
    """One connection's enrolment by invite (see the module contract)."""

    def __init__(
        self,
        invites: Invites,
        users: Users,
        *,
        addr: str = "?",
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._invites = invites
        self._users = users
        self.addr = addr
        self._now = now
        self.invite: Invite | None = None
        self.offered: list[asyncssh.SSHKey] = []
        self.tries = 0  # wrong codes typed on this connection
        self.greeting: str | None = None
        self.env: dict[str, str] = {}
        self._refusal: str | None = None  # why the code cannot be asked for

    def begin(self, name: str) -> None:
        """A login as ``name`` begins: forget the keys offered for any earlier name."""
        self.offered = []
        self.invite = self._pending(name) if valid_name(name) else None

    def _pending(self, name: str) -> Invite | None:
        try:
            return self._invites.pending(name, self._now())
        except UserError as exc:
            log.warning("%s", exc)
            return None

    def offer(self, key: asyncssh.SSHKey) -> None:
        """The client offered ``key``, which no file authorizes: remember it if an invite
        is pending."""
        known = {k.public_data for k in self.offered}
        # Dropbear offers its default key again when -i names the same file.
        if self.invite is not None and len(known) < MAX_OFFERED and key.public_data not in known:
            self.offered.append(key)

    def asks(self) -> bool:
        """Keyboard-interactive is offered: an invite is pending and tries are left.

        Nothing else is ever asked by keyboard, so no password can be guessed there.
        """
        return self.invite is not None and self.tries < MAX_CODE_TRIES

    def challenge(self, name: str) -> Challenge:
        """The prompt for the code, or (with no prompt) the line that refuses."""
        # Asked again: the invite may have expired or been revoked since begin().
        self._refusal = None
        if not self.offered:
            self._refusal = NO_CLIENT_KEY
        elif self._pending(name) is None:
            self._refusal = GONE.format(name=name)
        if self._refusal is not None:
            return ("", self._refusal + "\n", "", ())
        fingerprint = self.offered[0].get_fingerprint()
        # No name, and the instruction ends its own line: dbclient prints both as they
        # are, with no line break after either.
        return (
            "",
            f"To register this device's key ({fingerprint}) for {name}:\n",
            "",
            ((f"Invite code for {name}: ", True),),
        )

    async def answer(self, name: str, responses: Sequence[str]) -> Reply:
        """Check what was typed for the challenge; on the right code, register the key."""
        if self._refusal == NO_CLIENT_KEY:
            return Reply(refusal=NO_KEY_OFFERED)
        if self._refusal is not None:
            return Reply(refusal=self._refusal)
        if len(responses) != 1:
            return Reply()
        self.tries += 1
        key = self.offered[0]

        def enrol(invite: Invite) -> None:
            entry = KeyEntry.parse(key.export_public_key().decode().strip(), "the offered key")
            self._users.add(name, [entry], invite.profile)

        try:
            # scrypt takes a few tens of milliseconds, and the key file is written:
            # off the event loop. The invite is used up only once the key is stored.
            outcome, invite = await asyncio.to_thread(
                self._invites.redeem, name, str(responses[0]), self._now(), enrol
            )
        except UserError as exc:
            log.error("could not register a key for %s: %s", name, exc)
            return Reply(refusal=NOT_STORED)
        if outcome == "gone":
            return Reply(refusal=GONE.format(name=name))
        if outcome == "wrong" or invite is None:
            log.info("%s: wrong invite code for %s (try %d)", self.addr, name, self.tries)
            return Reply(refusal=TOO_MANY if self.tries >= MAX_CODE_TRIES else None)
        self._enrolled(name, key, invite)
        return Reply(accepted=True)

    def _enrolled(self, name: str, key: asyncssh.SSHKey, invite: Invite) -> None:
        fingerprint = key.get_fingerprint()
        log.info("registered key %s for %s from %s (invite)", fingerprint, name, self.addr)
        others = len(self.offered) - 1
        extra = (
            f" Your device offered {others + 1} keys; the first one was registered."
            if others
            else ""
        )
        self.greeting = (
            f"Your key {fingerprint} is now registered for {name}: next time it logs "
            f"in by itself.{extra}"
        )
        if invite.profile:
            self.env = {PROFILE_VAR: invite.profile}
