"""Failed logins on one connection: counted, and cut at the limit, below SSH."""

from __future__ import annotations

import asyncssh

from kindlessh._failcount import FailedLogins, count_failures


def test_the_first_reply_is_free_and_the_limit_th_failure_is_refused() -> None:
    counter = FailedLogins(limit=4)
    answers = [counter.reply() for _ in range(5)]
    # The "none" request, then three failed logins answered; the 4th is not.
    assert answers == [True, True, True, True, False]
    assert counter.failed == 4


def test_no_reply_no_failure() -> None:
    counter = FailedLogins(limit=4)
    assert counter.failed == 0
    counter.reply()
    assert counter.failed == 0


class FakeConnection:
    """What count_failures wraps: the failure reply, and disconnect."""

    def __init__(self) -> None:
        self.sent: list[bool] = []
        self.disconnected: list[tuple[int, str]] = []

    def send_userauth_failure(self, partial_success: bool) -> None:
        self.sent.append(partial_success)

    def disconnect(self, code: int, reason: str) -> None:
        self.disconnected.append((code, reason))


def test_the_wrapped_connection_disconnects_instead_of_the_last_reply() -> None:
    conn = FakeConnection()
    counter = FailedLogins(limit=2)
    limits: list[int] = []
    count_failures(conn, counter, lambda: limits.append(counter.failed))
    conn.send_userauth_failure(False)
    conn.send_userauth_failure(True)
    assert conn.sent == [False, True] and not conn.disconnected
    conn.send_userauth_failure(False)
    assert conn.sent == [False, True]
    assert conn.disconnected == [
        (asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures")
    ]
    assert limits == [2]
