"""The listening socket's front: the PROXY protocol header, read before SSH begins.

Contract:
- :class:`Front` is the ``tunnel`` object given to :func:`asyncssh.listen`: asyncssh
  calls its ``create_server(factory, host, port)`` and gets an ordinary asyncio server
  whose every connection first meets a :class:`_Gate`, then is handed to the
  ``factory``'s SSH connection (``transport.set_protocol``), with no copy of the stream
  afterwards.
- From an address in ``[server] proxy_from`` a connection must begin with a PROXY
  header (:mod:`._proxyproto`, version 2 or 1) within ``proxy_timeout`` seconds. The
  header's source address and port then stand for the connection's peer everywhere:
  the ``peername`` of the transport asyncssh is given (:class:`_Claimed`), so asyncssh
  itself checks a key's ``from="..."`` option and a certificate's ``source-address``
  against the client, and every log line, :mod:`._guard`'s penalties and the accept
  log read it from the SSH connection; ``proxied_by`` holds the proxy's own address.
  A header with no address (v2 UNSPEC, v1 UNKNOWN) leaves the proxy's address. A
  LOCAL command is the proxy's health check: it is answered with the SSH version line
  and closed, logged at debug level only, never counted against any address. A
  malformed, oversized or late header is refused: logged, closed, no SSH started (and
  the proxy's address is not penalised: it carries everyone's connections).
- From any other address SSH starts at once (the server's version line is not held
  back), and the client's first bytes are watched: a connection that begins with a
  PROXY header is refused (logged, closed), so a stranger cannot claim another
  address. It was let in by the guard as the address it is, so it is charged as one
  that closed without logging in.

Strategy: asyncssh documents ``tunnel`` as an SSH connection, but calls no more of it
than ``create_server`` (its ``_TunnelListenerProtocol``), so an object with that method
puts the gate under asyncssh without reaching into its internals. The gate is the
transport's protocol only until it has decided, so an established connection costs
nothing more than without it. asyncssh reads the peer's address from the transport
once, in ``connection_made`` (its ``_peer_addr``, which ``from=`` and
``source-address`` are checked against), not from the connection's extra info; so a
proxied connection hands it :class:`_Claimed`, the real transport with only
``peername`` (and ``proxied_by``) answered differently. Everything else, and so every
byte written, closing, aborting and flow control, is the real transport's: the
transport's protocol is still the SSH connection itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from ._errors import ProxyHeaderError
from ._guard import source_of
from ._proxyproto import parse_header, starts_like_header

log = logging.getLogger("kindlessh.server")

# What an SSH server sends first; the health check's answer.
VERSION_LINE = b"SSH-2.0-kindlessh\r\n"

SessionFactory = Callable[[str, int], Any]  # asyncssh's: returns an SSH connection


class Front:
    """The server asyncssh listens through (see the module contract)."""

    def __init__(
        self,
        proxy_from: list[IPv4Network | IPv6Network],
        proxy_timeout: float,
        sock: socket.socket | None = None,
    ) -> None:
        self.proxy_from = proxy_from
        self.proxy_timeout = proxy_timeout
        self.sock = sock

    def trusts(self, addr: str) -> bool:
        """Whether ``addr`` may send a PROXY header."""
        if not self.proxy_from:
            return False
        try:
            ip = ip_address(source_of(addr))
        except ValueError:
            return False
        return any(ip in net for net in self.proxy_from)

    async def create_server(
        self, session_factory: SessionFactory, listen_host: str, listen_port: int
    ) -> asyncio.Server:
        """asyncssh's call: listen on the given socket, or on host and port."""
        loop = asyncio.get_running_loop()

        def gate() -> _Gate:
            return _Gate(self, session_factory)

        if self.sock is not None:
            return await loop.create_server(gate, sock=self.sock)
        return await loop.create_server(gate, listen_host or None, listen_port)


class _Gate(asyncio.Protocol):
    """One connection until it is handed to SSH (or refused)."""

    def __init__(self, front: Front, factory: SessionFactory) -> None:
        self._front = front
        self._factory = factory
        self._transport: asyncio.Transport | None = None
        self._addr = "?"
        self._trusted = False
        self._buffer = b""
        self._conn: Any = None  # the SSH connection, once made
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # decided: handed over or refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._addr = str(peer[0]) if peer else "?"
        self._trusted = self._front.trusts(self._addr)
        if self._trusted:
            self._timer = asyncio.get_running_loop().call_later(
                self._front.proxy_timeout, self._expired
            )
            return
        # A stranger: SSH begins now; only its first bytes are looked at.
        self._conn = self._factory("", 0)
        self._conn.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        if self._trusted:
            self._read_header()
        else:
            self._watch_stranger()

    def _watch_stranger(self) -> None:
        begins = starts_like_header(self._buffer)
        if begins is None:
            return
        if begins:
            log.info(
                "%s: refused: a PROXY header from an address not in [server] proxy_from",
                self._addr,
            )
            self._refuse()
            return
        self._hand_over()

    def _read_header(self) -> None:
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            log.warning("%s (proxy): refused: %s", self._addr, exc)
            self._refuse()
            return
        if header is None:
            return
        self._cancel_timer()
        assert self._transport is not None
        if header.local:
            log.debug("%s: PROXY LOCAL (health check); answered", self._addr)
            self._done = True
            self._transport.write(VERSION_LINE)
            self._transport.close()
            return
        self._buffer = self._buffer[header.length:]
        self._conn = self._factory("", 0)
        self._conn.connection_made(_Claimed(self._transport, header.source, self._addr))
        if not self._done:  # the guard may have refused it in connection_made
            self._hand_over()

    def _hand_over(self) -> None:
        assert self._transport is not None
        self._done = True
        rest, self._buffer = self._buffer, b""
        if self._transport.is_closing():
            return
        self._transport.set_protocol(self._conn)
        if rest:
            self._conn.data_received(rest)

    def _refuse(self) -> None:
        self._done = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _expired(self) -> None:
        self._timer = None
        log.warning(
            "%s (proxy): refused: no PROXY header within %g s",
            self._addr, self._front.proxy_timeout,
        )
        self._refuse()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        if self._conn is not None:
            return bool(self._conn.eof_received())
        if not self._done:
            log.warning("%s (proxy): refused: closed before its PROXY header", self._addr)
            self._done = True
            self._cancel_timer()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._done = True
        if self._conn is not None:
            self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._conn.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._conn.resume_writing()


class _Claimed(asyncio.Transport):
    """A proxied connection's transport as asyncssh sees it: the real one, except that
    ``peername`` is the PROXY header's source (when it has one) and ``proxied_by`` the
    proxy's address. Every other call goes to the real transport unchanged."""

    def __init__(
        self, real: asyncio.Transport, source: tuple[str, int] | None, proxy: str
    ) -> None:
        super().__init__()
        self._real = real
        self._claimed: dict[str, Any] = {"proxied_by": proxy}
        if source is not None:
            self._claimed["peername"] = source

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._claimed:
            return self._claimed[name]
        return self._real.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._real.writelines(list_of_data)

    def write_eof(self) -> None:
        self._real.write_eof()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def abort(self) -> None:
        self._real.abort()

    def close(self) -> None:
        self._real.close()

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)
