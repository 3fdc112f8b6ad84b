"""The environment a client may send: only the variables kindlessh reads, bounded.

Contract: after :func:`accept_only_used` on a session channel, the client's ``env``
requests for a name in :data:`USED` with a value of at most :data:`MAX_VALUE` bytes are
kept (one value per name, the last one sent); every other request is refused (the
client is told so; OpenSSH's client goes on without it). Variables set by the key's
``environment=`` option in authorized_keys are the server's own and stay as they are.

Strategy: asyncssh keeps every variable a client sends for the life of the channel,
with no bound, and has no hook to refuse one; 50,000 variables of 1 KB each held 115 MB
per session. The channel's own handler for the request is replaced, per channel.
"""

from __future__ import annotations

from typing import Any

from asyncssh.packet import SSHPacket

# COLORTERM chooses the colour depth (_profile.color_depth_for); KINDLESSH_PROFILE the
# screen profile (_profile.choose_profile). The terminal type comes with the PTY request.
USED = frozenset({b"COLORTERM", b"KINDLESSH_PROFILE"})
MAX_VALUE = 64  # bytes: "truecolor" and "eink" are far shorter


def accept_only_used(chan: Any) -> None:
    """Make ``chan`` (an asyncssh server channel) keep only the variables kindlessh uses."""

    def process_env_request(packet: SSHPacket) -> bool:
        name = packet.get_string()
        value = packet.get_string()
        packet.check_end()
        if name not in USED or len(value) > MAX_VALUE:
            return False
        chan._env[name] = value
        chan._str_env = None  # asyncssh's decoded copy, made again when next asked for
        return True

    chan._process_env_request = process_env_request
