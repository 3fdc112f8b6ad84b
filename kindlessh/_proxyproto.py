"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 2 and 1), parsed.

Contract:
- Pure: bytes in, a :class:`ProxyHeader` (or "need more bytes") out; no I/O, no clock.
- :func:`parse_header` reads the header at the start of ``data``: None while ``data`` is
  a proper prefix of a header that may still be valid; a :class:`ProxyHeader` once it is
  complete (``length`` bytes of ``data`` are the header, the rest is the client's first
  bytes); :class:`~kindlessh._errors.ProxyHeaderError` when it can never be valid (not
  a PROXY header, malformed, longer than :data:`MAX_V2_PAYLOAD` or :data:`MAX_V1_LINE`,
  a version other than 2 in the binary form, a datagram or UNIX-socket client).
- ``source`` is the client's address and port, or None when the header says to use
  the connection's own endpoints: the LOCAL command (``local`` is True; a proxy's
  health check), a PROXY command with the UNSPEC family, or v1 ``UNKNOWN``.
- TLVs after the addresses are skipped, unread (they count in ``length``).
- :func:`starts_like_header` tells, from a connection's first bytes, whether they begin
  a PROXY header: True, False, or None while too few bytes have come to tell (an SSH
  client's ``SSH-`` differs from both signatures at its first byte).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from ._errors import ProxyHeaderError

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_V1 = b"PROXY "
MAX_V1_LINE = 107  # the spec's bound, CRLF included
# Address block plus TLVs accepted; the spec allows 65535, HAProxy sends a few dozen
# bytes (more with SSL TLVs, which a TCP-mode proxy in front of SSH does not add).
MAX_V2_PAYLOAD = 1024
_V2_FIXED = 16  # signature, version/command, family/transport, length

_CMD_LOCAL, _CMD_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header."""

    version: int  # 1 or 2
    length: int  # bytes of the header, TLVs included
    local: bool  # the LOCAL command: the proxy's own connection (a health check)
    source: tuple[str, int] | None  # the client's address and port; None: use the peer's
    destination: tuple[str, int] | None = None


def starts_like_header(data: bytes) -> bool | None:
    """Whether ``data`` (a connection's first bytes) begins a PROXY header; None: too
    few bytes to tell."""
    for signature in (SIGNATURE_V2, PREFIX_V1):
        common = min(len(data), len(signature))
        if data[:common] == signature[:common]:
            return True if common == len(signature) else None
    return False


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more bytes are needed.

    Raises:
        ProxyHeaderError: ``data`` does not start with a header that can be used.
    """
    started = starts_like_header(data)
    if started is False:
        raise ProxyHeaderError("not a PROXY protocol header")
    if started is None:
        return None
    if data.startswith(SIGNATURE_V2):
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    ver_cmd, fam, payload = struct.unpack_from("!BBH", data, len(SIGNATURE_V2))
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY header version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"PROXY header command {command:#x} is not LOCAL or PROXY")
    if payload > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(
            f"PROXY header of {payload} bytes after its first 16, above {MAX_V2_PAYLOAD}"
        )
    length = _V2_FIXED + payload
    if len(data) < length:
        return None
    family, transport = fam >> 4, fam & 0x0F
    if family not in (_AF_UNSPEC, *_ADDRESS_BYTES):
        raise ProxyHeaderError(f"PROXY header address family {family:#x} is unknown")
    needed = _ADDRESS_BYTES.get(family, 0)
    if payload < needed:
        raise ProxyHeaderError(
            f"PROXY header holds {payload} address bytes, its family needs {needed}"
        )
    if command == _CMD_LOCAL:
        # The proxy speaking for itself: address block ignored, as the spec says.
        return ProxyHeader(version=2, length=length, local=True, source=None)
    if family == _AF_UNSPEC:
        return ProxyHeader(version=2, length=length, local=False, source=None)
    if transport != _STREAM:
        raise ProxyHeaderError("PROXY header for a datagram client; SSH is a stream")
    if family == _AF_UNIX:
        raise ProxyHeaderError("PROXY header for a UNIX socket client: no address to use")
    block = data[_V2_FIXED:_V2_FIXED + needed]
    size = 4 if family == _AF_INET else 16
    src = ip_address(block[:size])
    dst = ip_address(block[size:2 * size])
    src_port, dst_port = struct.unpack_from("!HH", block, 2 * size)
    return ProxyHeader(
        version=2, length=length, local=False,
        source=(str(src), src_port), destination=(str(dst), dst_port),
    )


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1_LINE)
    if end < 0:
        if len(data) >= MAX_V1_LINE:
            raise ProxyHeaderError(f"PROXY header line longer than {MAX_V1_LINE} bytes")
        if b"\n" in data:
            raise ProxyHeaderError("PROXY header line not ended by CRLF")
        return None
    length = end + 2
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY header line is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(version=1, length=length, local=False, source=None)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY header line is not PROXY TCP4|TCP6|UNKNOWN ...")
    kind = IPv4Address if fields[1] == "TCP4" else IPv6Address
    try:
        src, dst = kind(fields[2]), kind(fields[3])
    except ValueError:
        raise ProxyHeaderError(f"PROXY header addresses are not {fields[1]}") from None
    src_port, dst_port = _port(fields[4]), _port(fields[5])
    return ProxyHeader(
        version=1, length=length, local=False,
        source=(str(src), src_port), destination=(str(dst), dst_port),
    )


def _port(text: str) -> int:
    # Decimal, no sign, no leading zero (the spec's form); 0 to 65535.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY header port {text[:8]!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY header port {port} is above 65535")
    return port
