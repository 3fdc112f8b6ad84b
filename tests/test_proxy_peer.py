"""Who the peer is behind a trusted proxy: asyncssh itself checks a key's ``from="..."``
and a certificate's ``source-address`` against the PROXY header's address, never the
proxy's; the transport it is handed is the real one in everything else; and a direct
connection's accept line keeps its shape."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._front import _Claimed

from .conftest import ServerFactory
from .haproxy import running_haproxy
from .helpers import CLIENT_KEY
from .test_proxy import CLAIMED, sent_first, v2_header

# The address the proxy (127.0.0.1 here) must not stand for.
ELSEWHERE = "198.51.100.9"
RESTRICTED = asyncssh.generate_private_key("ssh-ed25519")
CA = asyncssh.generate_private_key("ssh-ed25519")
CERT_KEY = asyncssh.generate_private_key("ssh-ed25519")


def keys_file(tmp_path: Path, line: str) -> str:
    path = tmp_path / "restricted_keys"
    path.write_text(line + "\n")
    return str(path)


def key_line(pattern: str) -> str:
    return f'from="{pattern}" ' + RESTRICTED.export_public_key().decode().strip()


async def logs_in(
    port: int, first: bytes | None, key: object = RESTRICTED, client: str = "127.0.0.1"
) -> bool:
    """Whether ``key`` logs in from ``client``, after sending ``first`` (a PROXY
    header) when given."""
    sock = sent_first(port, first) if first is not None else None
    options: dict[str, object] = (
        {"sock": sock} if sock is not None
        else {"host": "127.0.0.1", "port": port, "local_addr": (client, 0)}
    )
    try:
        conn = await asyncssh.connect(
            **options, username="reader", client_keys=[key],  # type: ignore[arg-type]
            known_hosts=None, agent_path=None,
        )
    except asyncssh.PermissionDenied:
        return False
    conn.close()
    await conn.wait_closed()
    return True


async def proxied_with(make_server: ServerFactory, keys: str, **server: object) -> Server:
    return await make_server(
        server={"proxy_from": "127.0.0.1", "authorized_keys": keys, **server}
    )


async def test_from_option_checks_the_header_address(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    caplog.set_level(logging.INFO, logger="asyncssh")
    srv = await proxied_with(make_server, keys_file(tmp_path, key_line("203.0.113.0/24")))
    assert await logs_in(srv.port, v2_header(CLAIMED, 4000))
    assert f"reader logged in from {CLAIMED}" in caplog.text
    assert f"Peer address: {CLAIMED}, port 4000" in caplog.text  # asyncssh's own log
    assert not await logs_in(srv.port, v2_header(ELSEWHERE, 4001))


async def test_from_option_never_matches_the_proxy_address(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # Restricted to the proxy's own address: a client behind the proxy is elsewhere.
    srv = await proxied_with(make_server, keys_file(tmp_path, key_line("127.0.0.1")))
    assert not await logs_in(srv.port, v2_header(CLAIMED, 4002))


async def test_from_option_without_a_proxy_checks_the_peer(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    keys = keys_file(tmp_path, key_line("203.0.113.0/24"))
    srv = await make_server(server={"authorized_keys": keys})
    assert not await logs_in(srv.port, None)
    keys = keys_file(tmp_path, key_line("127.0.0.1"))
    srv = await make_server(server={"authorized_keys": keys})
    assert await logs_in(srv.port, None)


async def test_from_option_through_a_real_haproxy(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # The client comes from 127.0.0.2 (any of 127/8 is loopback on Linux); HAProxy
    # reaches the server from 127.0.0.1, the one address in proxy_from.
    keys = keys_file(tmp_path, key_line("127.0.0.2"))
    srv = await proxied_with(make_server, keys)
    async with running_haproxy(tmp_path, [srv.port]) as port:
        assert await logs_in(port, None, client="127.0.0.2")
        assert not await logs_in(port, None, client="127.0.0.3")
    # A key for the proxy's own address is no key for the clients behind it.
    srv = await proxied_with(make_server, keys_file(tmp_path, key_line("127.0.0.1")))
    async with running_haproxy(tmp_path, [srv.port]) as port:
        assert not await logs_in(port, None, client="127.0.0.2")


async def test_certificate_source_address_checks_the_header_address(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    line = "cert-authority " + CA.export_public_key().decode().strip()
    srv = await proxied_with(make_server, keys_file(tmp_path, line))
    cert = CA.generate_user_certificate(
        CERT_KEY, "reader", principals=["reader"], source_address=["203.0.113.0/24"]
    )
    key = (CERT_KEY, cert)
    assert await logs_in(srv.port, v2_header(CLAIMED, 4003), key)
    assert not await logs_in(srv.port, v2_header(ELSEWHERE, 4004), key)


async def test_a_direct_connection_is_logged_as_before(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    conn = await asyncssh.connect(
        "127.0.0.1", server.port, username="reader", client_keys=[CLIENT_KEY],
        known_hosts=None, agent_path=None,
    )
    client_port = conn.get_extra_info("sockname")[1]
    conn.close()
    await conn.wait_closed()
    accepted = [
        r.getMessage() for r in caplog.records
        if r.name == "kindlessh.server" and r.getMessage().startswith("connection from")
    ]
    assert accepted == [f"connection from 127.0.0.1 port {client_port}"]


class _Peer(asyncio.Protocol):
    """The far end of a loopback connection: what it received, and when it ended."""

    def __init__(self) -> None:
        self.received = b""
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> None:
        self.eof.set_result(None)


async def test_the_claimed_transport_is_the_real_one_but_for_its_peer() -> None:
    loop = asyncio.get_running_loop()
    far = _Peer()
    listener = await loop.create_server(lambda: far, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    real, protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        claimed = _Claimed(real, (CLAIMED, 4242), "127.0.0.1")
        assert claimed.get_extra_info("peername") == (CLAIMED, 4242)
        assert claimed.get_extra_info("proxied_by") == "127.0.0.1"
        assert claimed.get_extra_info("sockname") == real.get_extra_info("sockname")
        assert claimed.get_extra_info("socket") is real.get_extra_info("socket")
        assert claimed.get_extra_info("nothing", "default") == "default"
        # No address in the header: the proxy's own stays.
        unspec = _Claimed(real, None, "127.0.0.1")
        assert unspec.get_extra_info("peername") == real.get_extra_info("peername")
        # Flow control and reading are the real transport's.
        claimed.set_write_buffer_limits(high=4096, low=1024)
        assert real.get_write_buffer_limits() == (1024, 4096)
        assert claimed.get_write_buffer_limits() == (1024, 4096)
        assert claimed.get_write_buffer_size() == real.get_write_buffer_size()
        claimed.pause_reading()
        assert not real.is_reading() and not claimed.is_reading()
        claimed.resume_reading()
        assert real.is_reading() and claimed.is_reading()
        assert claimed.get_protocol() is protocol
        # Bytes and the end of them reach the far end.
        claimed.write(b"SSH-2.0-x\r\n")
        claimed.writelines([b"a", b"b"])
        assert claimed.can_write_eof()
        claimed.write_eof()
        await asyncio.wait_for(far.eof, 5)
        assert far.received == b"SSH-2.0-x\r\nab"
        assert not claimed.is_closing()
        claimed.close()
        assert real.is_closing() and claimed.is_closing()
    finally:
        real.close()
        listener.close()
        await listener.wait_closed()
