"""The HAProxy PROXY protocol header (v1 text and v2 binary): parse only.

Runs in: the supervisor, on connections from `proxy_trusted_networks` to
a listener with `proxy: true`, before admission.  It is the one place root
reads bytes off a connection, and it is kept safe by what reaches it, not
by hope:
  - the peer address is checked against the trusted networks before a
    byte is read: an untrusted peer is refused unread, so only the
    operator's own balancer ever feeds this parser;
  - the balancer writes the header before any client byte (POP3 clients
    wait for the greeting), and root looks at no more than the longest
    header it accepts: 16 bytes, then exactly the length v2 declares
    (at most limits.PROXY_HEADER_MAX), or at most 107 bytes of a v1 line;
    it consumes exactly the header and leaves the rest to the front;
  - parse() is a pure function of those bytes: fixed offsets, no
    allocation beyond them, every field range-checked, any doubt a
    ProxyHeaderError (tests/unit/test_proxy_header.py fuzzes it, as does
    the atheris target in tests/fuzz/).
Moving it to a capability-free process would cost a process hop per
connection before admission, for bytes the operator's balancer wrote.

What is kept of a header is the client's address and port.  LOCAL (v2,
the balancer's own health checks), UNSPEC (v2) and UNKNOWN (v1) mean "no
client behind this": the connection's own address stands.  TLVs are checked for their
framing and skipped.  The spec: haproxy's doc/proxy-protocol.txt.
"""
import ipaddress
import struct
from typing import NamedTuple

from popd import limits

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107                    # the longest v1 line, CRLF included (the spec's bound)
V2_FIXED = 16                   # signature, version/command, family, length
_V2 = struct.Struct("!12sBBH")
_TCP4 = struct.Struct("!4s4sHH")
_TCP6 = struct.Struct("!16s16sHH")
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _TCP_OVER_IPV4, _TCP_OVER_IPV6 = 0x00, 0x11, 0x21


class ProxyHeaderError(Exception):
    """Not a header popd accepts; the text says why, for the log line."""


class ProxyHeader(NamedTuple):
    length: int                 # bytes of the connection the header takes
    client_ip: str | None       # None: LOCAL or UNKNOWN, no client behind it
    client_port: int | None


def wanted(data):
    """How many bytes the header in `data` (its first bytes) needs at most,
    to peek that many: 16 until the version is known."""
    if len(data) >= V2_FIXED and data.startswith(V2_SIGNATURE):
        return V2_FIXED + _V2.unpack_from(data)[3]
    if data.startswith(V1_PREFIX):
        return V1_MAX
    return V2_FIXED


def parse(data):
    """The header at the start of `data`; None while it is incomplete."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _parse_v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY header")


def _parse_v2(data):
    if len(data) < V2_FIXED:
        return None
    _, ver_cmd, family, length = _V2.unpack_from(data)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header of version {ver_cmd >> 4}")
    command = ver_cmd & 0xF
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"v2 command {command}")
    total = V2_FIXED + length
    if total > limits.PROXY_HEADER_MAX:
        raise ProxyHeaderError(f"v2 header of {total} bytes")
    if len(data) < total:
        return None
    body = data[V2_FIXED:total]
    if command == _LOCAL or family == _UNSPEC:
        # A health check, or a balancer that could not tell: its addresses
        # are not used (and UNSPEC carries none).
        return ProxyHeader(total, None, None)
    if family == _TCP_OVER_IPV4:
        shape = _TCP4
    elif family == _TCP_OVER_IPV6:
        shape = _TCP6
    else:
        raise ProxyHeaderError(f"v2 family/protocol 0x{family:02x} (only TCP)")
    if length < shape.size:
        raise ProxyHeaderError(f"v2 addresses in {length} bytes")
    src, _, sport, _ = shape.unpack_from(body)
    _check_tlvs(body[shape.size:])
    return ProxyHeader(total, _client_ip(ipaddress.ip_address(src)), sport)


def _check_tlvs(tlvs):
    pos = 0
    while pos < len(tlvs):
        if pos + 3 > len(tlvs):
            raise ProxyHeaderError("v2 TLV cut short")
        (n,) = struct.unpack_from("!H", tlvs, pos + 1)
        pos += 3 + n
        if pos > len(tlvs):
            raise ProxyHeaderError("v2 TLV runs past the header")


def _parse_v1(data):
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("v1 line without CRLF in 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("v1 line with a bare CR or LF")
        return None
    line = data[:end]
    if b"\n" in line or b"\r" in line:
        raise ProxyHeaderError("v1 line with a bare CR or LF")
    if not line.isascii():
        raise ProxyHeaderError("v1 line not in plain ASCII")
    words = line.decode("ascii").split(" ")
    if words[1:2] == ["UNKNOWN"]:
        return ProxyHeader(end + 2, None, None)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 line is not PROXY TCP4|TCP6 src dst sport dport")
    _, proto, src, dst, sport, dport = words
    version = 4 if proto == "TCP4" else 6
    ips = []
    for text in (src, dst):
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ProxyHeaderError(f"v1 {proto} address is not one") from None
        if ip.version != version or "%" in text:
            raise ProxyHeaderError(f"v1 {proto} address is not one")
        ips.append(ip)
    ports = [_port(p) for p in (sport, dport)]
    return ProxyHeader(end + 2, _client_ip(ips[0]), ports[0])


def _port(text):
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or (
            len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError("v1 port is not 0..65535 in decimal")
    return int(text)


def _client_ip(ip):
    """The form admission and the logs use: IPv4-mapped IPv6 as IPv4."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)
