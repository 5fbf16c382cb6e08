"""Admission control: the global cap, the per-address cap, the refusal.

Runs in: the supervisor.  It decides from the peer address alone (the
supervisor never reads a byte a client sent); over a cap the client gets
one canned `-ERR [SYS/TEMP]` line and the socket is closed at once, so a
flood never waits in the backlog or holds a slot.
"""
import socket

from popd import limits
from popd.addresses import address_key


class Admission:
    def __init__(self, max_children, max_per_ip):
        self.max_children = max_children
        self.max_per_ip = max_per_ip
        self.per_key = {}
        self.total = 0

    def admit(self, ip):
        """Count the connection in and return its key, or None to refuse."""
        key = address_key(ip)
        if self.total >= self.max_children:
            return None
        if self.per_key.get(key, 0) >= self.max_per_ip:
            return None
        self.per_key[key] = self.per_key.get(key, 0) + 1
        self.total += 1
        return key

    def refusal_reason(self, ip):
        """Why admit(ip) said no: "limit" (max_children) or "per-ip"."""
        return "limit" if self.total >= self.max_children else "per-ip"

    def release(self, key):
        count = self.per_key[key] - 1
        if count:
            self.per_key[key] = count
        else:
            del self.per_key[key]
        self.total -= 1


def refuse(sock):
    """Send the canned line and close, without reading anything."""
    try:
        sock.send(limits.REFUSAL_LINE, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
