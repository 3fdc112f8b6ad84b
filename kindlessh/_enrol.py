"""Enrolment by invite code: how a device registers its key over keyboard-interactive.

Contract:
- One :class:`Enrolment` per connection. :meth:`Enrolment.begin` is told each login
  name the client tries. While ``kindlessh invite`` has an invite pending for *any*
  name, every name is treated alike, so that the methods offered never tell who has an
  invite: :meth:`Enrolment.offer` remembers the keys the client offers (at most
  :data:`MAX_OFFERED`, each once), and :meth:`Enrolment.asks` says keyboard-interactive
  may be offered, for :data:`MAX_CODE_TRIES` wrong codes. With no invite pending at all
  it is never offered.
- :meth:`Enrolment.challenge` asks for the code (naming the fingerprint of the first
  key offered), or carries the line that refuses: no key was offered, or the name's
  invite is gone (expired or revoked since the login began). A name that never had an
  invite is asked all the same.
- :meth:`Enrolment.answer` checks the typed code (off the event loop: scrypt, within the
  server's :class:`~kindlessh._guesses.GuessBudget`; a name without an invite costs the
  same scrypt and is a wrong code; a code over the budget is a wrong code, unchecked)
  and returns a :class:`Reply`: accepted (the first key offered is now the user's, with
  the invite's profile), try again, or a refusal line to end the connection with. After
  an accepted code, :attr:`Enrolment.greeting` is the line the chat opens with and
  :attr:`Enrolment.env` carries the invite's profile for this first login.
- The invites are either the file's (:class:`~kindlessh._invites.Invites`; the key goes
  to the user's file under ``users_dir``) or, with ``[storage] url``, the database's
  (:class:`~kindlessh._shared_accounts.SharedAccounts`; the key goes there, for every
  machine). Both read pending invites from memory; only redeeming waits.
- The code is what authorises the key: SSH clients name a key before signing with it,
  and a refused key is never signed, so the key is registered as offered; only a device
  holding its private key can log in with it afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncssh

from ._errors import UserError
from ._guesses import GuessBudget
from ._invites import Invite, Invites, Redeemed
from ._users import PROFILE_VAR, KeyEntry, Users, valid_name

log = logging.getLogger("kindlessh.server")

MAX_CODE_TRIES = 3
MAX_OFFERED = 16  # keys remembered per connection
GONE = (
    "kindlessh: the invite for {name} has expired or was cancelled; ask the owner "
    "for a new one"
)
NO_CLIENT_KEY = (
    "kindlessh: an invite code registers the key your SSH client offers, and it "
    "offered none. Make one, then connect again:\n"
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


class SharedInvites(Protocol):
    """Invites kept in the shared store (:class:`~kindlessh._shared_accounts.SharedAccounts`)."""

    def pending(self, name: str, now: datetime) -> Invite | None: ...

    def any_pending(self, now: datetime) -> bool: ...

    async def redeem_key(
        self, name: str, typed: str, now: datetime, entry: KeyEntry, budget: GuessBudget
    ) -> tuple[Redeemed, Invite | None]: ...


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
        invites: Invites | SharedInvites,
        users: Users,
        *,
        addr: str = "?",
        now: Callable[[], datetime] = _utc_now,
        budget: GuessBudget | None = None,
    ) -> None:
        self._invites = invites
        self._users = users
        self._budget = budget or GuessBudget(rate=1000.0, at_once=1000)
        self.addr = addr
        self._now = now
        self.invite: Invite | None = None  # the name's own invite, when it has one
        self.open = False  # some name has an invite: every name is asked for a code
        self.offered: list[asyncssh.SSHKey] = []
        self.tries = 0  # wrong codes typed on this connection
        self.greeting: str | None = None
        self.env: dict[str, str] = {}
        self._refusal: str | None = None  # why the code cannot be asked for

    def begin(self, name: str) -> None:
        """A login as ``name`` begins: forget the keys offered for any earlier name."""
        self.offered = []
        self.invite = self._pending(name) if valid_name(name) else None
        try:
            self.open = self.invite is not None or self._invites.any_pending(self._now())
        except UserError as exc:
            log.warning("%s", exc)
            self.open = False

    def _pending(self, name: str) -> Invite | None:
        try:
            return self._invites.pending(name, self._now())
        except UserError as exc:
            log.warning("%s", exc)
            return None

    def offer(self, key: asyncssh.SSHKey) -> None:
        """The client offered ``key``, which no file authorizes: remember it if an invite
        is pending (for any name)."""
        known = {k.public_data for k in self.offered}
        # Dropbear offers its default key again when -i names the same file.
        if self.open and len(known) < MAX_OFFERED and key.public_data not in known:
            self.offered.append(key)

    def asks(self) -> bool:
        """Keyboard-interactive is offered: an invite is pending (for any name) and tries
        are left.

        Nothing else is ever asked by keyboard, so no password can be guessed there.
        """
        return self.open and self.tries < MAX_CODE_TRIES

    def challenge(self, name: str) -> Challenge:
        """The prompt for the code, or (with no prompt) the line that refuses."""
        # Asked again: the invite may have expired or been revoked since begin().
        self._refusal = None
        if not self.offered:
            self._refusal = NO_CLIENT_KEY
        elif self.invite is not None and self._pending(name) is None:
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
        invites = self._invites

        def enrol(invite: Invite) -> None:
            entry = KeyEntry.parse(key.export_public_key().decode().strip(), "the offered key")
            self._users.add(name, [entry], invite.profile)

        try:
            # scrypt takes a few tens of milliseconds, and the key file is written:
            # off the event loop. The invite is used up only once the key is stored.
            typed, now = str(responses[0]), self._now()
            if isinstance(invites, Invites):
                checked = await self._budget.run(lambda: invites.redeem(name, typed, now, enrol))
            else:
                entry = KeyEntry.parse(key.export_public_key().decode().strip(), "the offered key")
                checked = await invites.redeem_key(name, typed, now, entry, self._budget)
        except UserError as exc:
            log.error("could not register a key for %s: %s", name, exc)
            return Reply(refusal=NOT_STORED)
        outcome, invite = checked if checked is not None else ("wrong", None)
        if outcome == "gone" and self.invite is None:
            outcome = "wrong"  # no invite to lose: a wrong code, as for any name
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
