"""Connections from a load balancer that still owe their PROXY header.

Runs in: the supervisor.  A listener with `proxy: true` accepts only from
`proxy_trusted_networks`: any other peer is refused without a byte read
(log line `reason=untrusted-proxy`).  A trusted connection waits here,
non-blocking, until its header is in (proxy_header.py says what root
reads of it and why that is safe), at most limits.PROXY_HEADER_TIMEOUT,
and at most limits.MAX_PROXY_PENDING connections at a time.  Then the
client's address and port replace the balancer's, and admission, the
broker's throttle, the logs and the process titles all see the client.
"""
import ipaddress
import selectors
import socket
import time

from popd import limits
from popd.supervisor import admission, proxy_header
from popd.unix.logsetup import log


def trusted_networks(cfg):
    return tuple(ipaddress.ip_network(n) for n in cfg.proxy_trusted_networks)


def is_trusted(ip, networks):
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class HeaderWait:
    """One connection whose header has not fully arrived."""

    def __init__(self, conn, ip, port, listen, deadline, session):
        self.conn, self.ip, self.port, self.listen = conn, ip, port, listen
        self.session = session
        self.deadline = deadline
        self.buf = b""                  # what has arrived of the header


class ProxyHeaders:
    def __init__(self, sel, admit, refused):
        self.sel = sel
        self.refused = refused          # Counter of refusals by reason (stats.py)
        self.admit = admit              # admit(conn, ip, port, listen, session) once known
        self.waiting = {}               # fd -> HeaderWait

    def expect(self, conn, ip, port, listen, networks, session):
        """A connection accepted on a proxy listener."""
        if not is_trusted(ip, networks):
            log.warning("refused: rip=%s, reason=untrusted-proxy (listener %s "
                        "expects a PROXY header; the peer is not in "
                        "proxy_trusted_networks)", ip, listen.address, session=session)
            self.refused["untrusted-proxy"] += 1
            admission.refuse(conn)
            return
        if len(self.waiting) >= limits.MAX_PROXY_PENDING:
            self.refused["limit"] += 1
            log.warning("refused: rip=%s, reason=limit (%d connections owe a "
                        "PROXY header)", ip, len(self.waiting), session=session)
            conn.close()
            return
        conn.setblocking(False)
        wait = HeaderWait(conn, ip, port, listen,
                          time.monotonic() + limits.PROXY_HEADER_TIMEOUT, session)
        self.waiting[conn.fileno()] = wait
        self.sel.register(conn, selectors.EVENT_READ, (self.on_readable, wait))
        self.on_readable(wait)          # it usually came with the connection

    def on_readable(self, wait):
        try:
            header = self._read(wait)
        except proxy_header.ProxyHeaderError as e:
            self._drop(wait, str(e))
            return
        except (OSError, EOFError):
            self._drop(wait, "closed before its header")
            return
        if header is None:
            return                      # more to come
        self._forget(wait)
        wait.conn.setblocking(True)
        if header.client_ip is None:    # LOCAL / UNKNOWN: the balancer itself
            self.admit(wait.conn, wait.ip, wait.port, wait.listen, wait.session)
        else:
            self.admit(wait.conn, header.client_ip, header.client_port, wait.listen,
                       wait.session)

    def _read(self, wait):
        """The header once it is all there, else None.  What has arrived
        of it is taken off the socket (so a slow balancer does not keep it
        readable), and never a byte past it: a peek first, of no more
        than the header can still need (proxy_header.wanted).  A v2 header
        takes two rounds: its fixed part says how long the rest is."""
        for _ in range(2):
            have = len(wait.buf)
            need = min(proxy_header.wanted(wait.buf), limits.PROXY_HEADER_MAX) - have
            try:
                data = wait.conn.recv(need, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            if not data:
                raise EOFError
            buf = wait.buf + data
            header = proxy_header.parse(buf)
            take = len(data) if header is None else header.length - have
            if len(wait.conn.recv(take, socket.MSG_DONTWAIT)) != take:
                raise proxy_header.ProxyHeaderError("bytes gone between peek and read")
            wait.buf = buf[:have + take]
            if header is not None or len(data) < need:
                return header
        return None

    def expire(self, now):
        for wait in [w for w in self.waiting.values() if w.deadline <= now]:
            self._drop(wait, f"no header in {limits.PROXY_HEADER_TIMEOUT:.0f} s")

    def close_all(self):
        for wait in list(self.waiting.values()):
            self._forget(wait)
            wait.conn.close()

    def _drop(self, wait, detail):
        self.refused["bad-proxy-header"] += 1
        log.warning("refused: rip=%s, reason=bad-proxy-header (%s)", wait.ip, detail,
                    session=wait.session)
        self._forget(wait)
        wait.conn.close()               # nothing is sent: the peer is the balancer

    def _forget(self, wait):
        self.sel.unregister(wait.conn)
        del self.waiting[wait.conn.fileno()]
