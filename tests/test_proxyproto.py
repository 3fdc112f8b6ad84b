"""The PROXY protocol header parser, byte for byte (HAProxy's proxy-protocol.txt)."""

from __future__ import annotations

import struct

import pytest

from kindlessh._errors import ProxyHeaderError
from kindlessh._proxyproto import (
    MAX_V1_LINE,
    MAX_V2_PAYLOAD,
    SIGNATURE_V2,
    ProxyHeader,
    parse_header,
    starts_like_header,
)

SSH = b"SSH-2.0-OpenSSH_9.6\r\n"


def v2(ver_cmd: int, fam: int, payload: bytes) -> bytes:
    return SIGNATURE_V2 + struct.pack("!BBH", ver_cmd, fam, len(payload)) + payload


# 203.0.113.7:51000 -> 192.0.2.1:22, TCP over IPv4 (0x21 PROXY, 0x11 INET STREAM).
V2_INET = v2(0x21, 0x11, bytes([203, 0, 113, 7, 192, 0, 2, 1]) + struct.pack("!HH", 51000, 22))


def test_signature_is_the_spec_bytes() -> None:
    assert SIGNATURE_V2 == bytes.fromhex("0D0A0D0A000D0A515549540A")


def test_v2_ipv4_exact_bytes() -> None:
    assert V2_INET.hex() == (
        "0d0a0d0a000d0a515549540a" "21" "11" "000c" "cb007107" "c0000201" "c738" "0016"
    )
    header = parse_header(V2_INET + SSH)
    assert header == ProxyHeader(
        version=2, length=28, local=False,
        source=("203.0.113.7", 51000), destination=("192.0.2.1", 22),
    )
    assert (V2_INET + SSH)[header.length:] == SSH


def test_v2_ipv6() -> None:
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    data = v2(0x21, 0x21, src + dst + struct.pack("!HH", 40000, 2222))
    header = parse_header(data)
    assert header is not None
    assert header.source == ("2001:db8::7", 40000)
    assert header.destination == ("2001:db8::1", 2222)
    assert header.length == 16 + 36


def test_v2_tlvs_are_skipped() -> None:
    addresses = bytes([203, 0, 113, 7, 192, 0, 2, 1]) + struct.pack("!HH", 51000, 22)
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN "h2", then a NOOP of length 0
    data = v2(0x21, 0x11, addresses + tlvs) + SSH
    header = parse_header(data)
    assert header is not None and header.source == ("203.0.113.7", 51000)
    assert data[header.length:] == SSH


def test_v2_local_is_a_health_check() -> None:
    header = parse_header(v2(0x20, 0x00, b""))
    assert header == ProxyHeader(version=2, length=16, local=True, source=None)
    # LOCAL with an address block (HAProxy may fill one): still local, block ignored.
    header = parse_header(V2_INET[:12] + b"\x20" + V2_INET[13:])
    assert header is not None and header.local and header.source is None


def test_v2_unspec_means_use_the_real_peer() -> None:
    header = parse_header(v2(0x21, 0x00, b""))
    assert header == ProxyHeader(version=2, length=16, local=False, source=None)


@pytest.mark.parametrize("cut", [1, 5, 12, 13, 15, 16, 20, 27])
def test_v2_truncated_asks_for_more(cut: int) -> None:
    assert parse_header(V2_INET[:cut]) is None


def test_v2_oversized_is_refused_from_its_length_field() -> None:
    data = SIGNATURE_V2 + struct.pack("!BBH", 0x21, 0x11, MAX_V2_PAYLOAD + 1)
    with pytest.raises(ProxyHeaderError, match="above"):
        parse_header(data)  # refused before the payload arrives
    assert parse_header(v2(0x21, 0x11, V2_INET[16:] + bytes(MAX_V2_PAYLOAD - 12))) is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (v2(0x11, 0x11, V2_INET[16:]), "version 1"),
        (v2(0x22, 0x11, V2_INET[16:]), "command"),
        (v2(0x21, 0x41, V2_INET[16:]), "family"),
        (v2(0x21, 0x11, V2_INET[16:24]), "needs 12"),
        (v2(0x21, 0x12, V2_INET[16:]), "datagram"),
        (v2(0x21, 0x31, bytes(216)), "UNIX"),
        (b"SSH-2.0-x\r\n", "not a PROXY"),
    ],
)
def test_v2_malformed(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_header(data)


def test_v1_spec_examples() -> None:
    line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert parse_header(line + SSH) == ProxyHeader(
        version=1, length=len(line), local=False,
        source=("255.255.255.255", 65535), destination=("255.255.255.255", 65535),
    )
    ffff = ":".join(["ffff"] * 8)
    line = f"PROXY TCP6 {ffff} {ffff} 65535 65535\r\n".encode()
    assert len(line) == 104
    header = parse_header(line)
    assert header is not None and header.source == (ffff, 65535)
    line = b"PROXY UNKNOWN\r\n"
    assert parse_header(line + SSH) == ProxyHeader(version=1, length=15, local=False, source=None)
    line = f"PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n".encode()
    assert len(line) == MAX_V1_LINE
    header = parse_header(line)
    assert header is not None and header.source is None and header.length == MAX_V1_LINE


def test_v1_ordinary() -> None:
    header = parse_header(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 2222\r\nSSH-2.0-x\r\n")
    assert header is not None and header.source == ("203.0.113.7", 56324)
    assert header.length == len(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 2222\r\n")


def test_v1_truncated_and_oversized() -> None:
    assert parse_header(b"PROXY TCP4 203.0.113.7 192.0") is None
    assert parse_header(b"PROX") is None
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_header(b"PROXY TCP4 " + b"1" * 200)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a port missing
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",  # IPv6 in TCP4
        b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",  # IPv4 in TCP6
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 22\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 022 22\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 22\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 1 22\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 22\n",  # LF alone
        b"PROXY TCP4 203.0.113.\xff 192.0.2.1 1 22\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(line)


def test_starts_like_header() -> None:
    assert starts_like_header(b"SSH-2.0-OpenSSH") is False
    assert starts_like_header(b"S") is False
    assert starts_like_header(b"") is None
    assert starts_like_header(b"\r\n\r\n") is None
    assert starts_like_header(b"PROX") is None
    assert starts_like_header(b"PROXY ") is True
    assert starts_like_header(SIGNATURE_V2) is True
    assert starts_like_header(b"\r\n\r\nX") is False
