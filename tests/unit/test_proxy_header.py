"""The PROXY protocol header parser (root's one parser) and the
supervisor's reads of it: exact consumption, bounds, slow balancers."""
import collections
import ipaddress
import selectors
import socket
import struct
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popd import limits
from popd.supervisor import proxied, proxy_header
from popd.supervisor.proxy_header import ProxyHeader, ProxyHeaderError, parse

SIG = proxy_header.V2_SIGNATURE


def v2(command=1, family=0x11, src="192.0.2.7", dst="127.0.0.1", sport=40000, dport=110,
       tlvs=b"", version=2):
    body = b""
    if family in (0x11, 0x21):
        body = (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
                + struct.pack("!HH", sport, dport))
    body += tlvs
    return SIG + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("data, expected", [
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n", ("192.0.2.7", 40000)),
    (b"PROXY TCP6 2001:db8::7 ::1 0 995\r\n", ("2001:db8::7", 0)),
    (b"PROXY TCP6 ::ffff:192.0.2.9 ::1 65535 110\r\n", ("192.0.2.9", 65535)),
    (b"PROXY UNKNOWN\r\n", (None, None)),
    (b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n", (None, None)),
    (v2(), ("192.0.2.7", 40000)),
    (v2(family=0x21, src="2001:db8::7", dst="::1", sport=1), ("2001:db8::7", 1)),
    (v2(tlvs=b"\x04\x00\x04abcd\x03\x00\x00"), ("192.0.2.7", 40000)),
    (v2(command=0, family=0x11), (None, None)),           # LOCAL: health check
    (v2(command=0, family=0x00), (None, None)),
    (v2(command=1, family=0x00), (None, None)),           # UNSPEC
])
def test_headers_popd_accepts(data, expected):
    header = parse(data + b"USER alice\r\n")
    assert header.length == len(data)
    assert (header.client_ip, header.client_port) == expected


@pytest.mark.parametrize("data, why", [
    (b"USER alice\r\n", "no PROXY header"),
    (b"GET / HTTP/1.0\r\n", "no PROXY header"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110 x\r\n", "TCP4|TCP6"),
    (b"PROXY TCP5 192.0.2.7 127.0.0.1 40000 110\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 127.0.0.1 40000 110\r\n", "address"),
    (b"PROXY TCP4 192.0.2.07 127.0.0.1 40000 110\r\n", "address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 40000 110\r\n", "address"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 040000 110\r\n", "port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 110\r\n", "port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 110\r\n", "port"),
    (b"PROXY TCP4  192.0.2.7 127.0.0.1 1 110\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 192.0.2.7\n127.0.0.1 1 110\r\n", "bare CR or LF"),
    (b"PROXY TCP4 \xc3\xa9.0.2.7 127.0.0.1 1 110\r\n", "ASCII"),
    (b"PROXY " + b"x" * 101 + b"\r\n", "107 bytes"),
    (v2(version=1), "version 1"),
    (v2(command=2), "command 2"),
    (v2(family=0x12), "only TCP"),                         # UDP over IPv4
    (v2(family=0x31), "only TCP"),                         # UNIX stream
    (v2(tlvs=b"\x04\x00\x09abc"), "TLV runs past"),
    (v2(tlvs=b"\x04\x00"), "TLV cut short"),
    (SIG + b"\x21\x11\x00\x04" + b"\0" * 4, "addresses in 4 bytes"),
    (SIG + b"\x21\x11" + struct.pack("!H", limits.PROXY_HEADER_MAX), "bytes"),
])
def test_headers_popd_refuses(data, why):
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n", b"PROXY UNKNOWN\r\n",
    v2(), v2(family=0x21, src="::1", dst="::1"), v2(command=0, family=0)])
def test_every_prefix_of_a_header_is_incomplete(data):
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut
    assert parse(data).length == len(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_incomplete_a_header_or_a_refusal(data):
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    if header is not None:
        assert header.length <= min(len(data), limits.PROXY_HEADER_MAX)
        if header.client_ip is not None:
            assert str(ipaddress.ip_address(header.client_ip)) == header.client_ip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(0, 2**128 - 1), st.integers(0, 65535),
       st.binary(max_size=40), st.binary(max_size=20))
def test_v2_round_trip(version, n, port, tlv_value, after):
    src = ipaddress.IPv4Address(n % 2**32) if version == 4 else ipaddress.IPv6Address(n)
    tlv = b"\x05" + struct.pack("!H", len(tlv_value)) + tlv_value
    data = v2(family=0x11 if version == 4 else 0x21, src=str(src),
              dst="127.0.0.1" if version == 4 else "::1", sport=port, tlvs=tlv)
    header = parse(data + after)
    mapped = getattr(src, "ipv4_mapped", None)
    assert header == ProxyHeader(len(data), str(mapped or src), port)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535),
       st.integers(0, 65535))
def test_v1_round_trip(src, dst, sport, dport):
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    assert parse(line) == ProxyHeader(len(line), str(src), sport)


# -- the supervisor's reads ------------------------------------------------------

class Reads:
    """ProxyHeaders over a real socketpair, with the callback recorded."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.admitted = []
        self.refused = collections.Counter()
        self.headers = proxied.ProxyHeaders(self.sel, lambda *a: self.admitted.append(a),
                                            self.refused)
        self.server, self.balancer = socket.socketpair()
        self.listen = types.SimpleNamespace(address="127.0.0.1", port=110)

    def expect(self, ip="127.0.0.1", networks=(ipaddress.ip_network("127.0.0.0/8"),)):
        self.headers.expect(self.server, ip, 5555, self.listen, networks, "0123abcd")

    def pump(self):
        for key, _ in self.sel.select(0):
            callback, wait = key.data
            callback(wait)


def closed_silently(sock):
    """Closed without a word (a reset if bytes were left unread)."""
    try:
        return sock.recv(200) == b""
    except ConnectionResetError:
        return True


def test_the_header_is_consumed_exactly_and_client_bytes_stay_queued():
    r = Reads()
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n"
    r.balancer.sendall(header[:9])
    r.expect()
    assert not r.admitted
    r.balancer.sendall(header[9:30])
    r.pump()
    # What arrived was taken off the socket: nothing left to wake the loop.
    assert r.sel.select(0) == [] and not r.admitted
    r.balancer.sendall(header[30:] + b"CAPA\r\n")
    r.pump()
    (conn, ip, port, _, session), = r.admitted
    assert (ip, port, session) == ("192.0.2.7", 40000, "0123abcd") and not r.headers.waiting
    assert conn.recv(100) == b"CAPA\r\n"


def test_v2_with_pipelined_bytes_and_local_keeps_the_balancer_address():
    r = Reads()
    r.balancer.sendall(v2(command=0) + b"USER x\r\n")
    r.expect()
    (conn, ip, port, _, _), = r.admitted
    assert (ip, port) == ("127.0.0.1", 5555)
    assert conn.recv(100) == b"USER x\r\n"


def test_untrusted_peer_is_refused_unread_and_bad_headers_dropped():
    r = Reads()
    r.balancer.sendall(v2())
    r.expect(ip="192.0.2.50")
    assert not r.admitted and not r.headers.waiting
    assert r.balancer.recv(200) == limits.REFUSAL_LINE
    r = Reads()
    r.balancer.sendall(b"USER alice\r\n")
    r.expect()
    assert not r.admitted and not r.headers.waiting
    assert closed_silently(r.balancer)


def test_a_header_that_never_completes_expires():
    r = Reads()
    r.balancer.sendall(b"PROXY TCP4 1.2.")
    r.expect()
    r.headers.expire(1e18)
    assert not r.headers.waiting and not r.admitted
    assert closed_silently(r.balancer)


def test_ipv4_mapped_peers_match_ipv4_networks():
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert proxied.is_trusted("::ffff:10.1.2.3", nets)
    assert proxied.is_trusted("fd12::1", nets)
    assert not proxied.is_trusted("11.0.0.1", nets)
