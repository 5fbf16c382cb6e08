"""Binding the listening sockets.

Runs in: the supervisor, before anything is forked.

SO_REUSEADDR so a restart does not wait for TIME_WAIT; never SO_REUSEPORT,
which would let another process of the same uid join the port and take a
share of the connections.  IPv6 sockets get IPV6_V6ONLY so an IPv6
listener never silently swallows IPv4 too: each family is bound
explicitly, as configured.
"""
import socket


class BindError(Exception):
    pass


def bind(listen):
    """Bind one configured listener; returns a non-blocking socket."""
    family = socket.AF_INET6 if listen.family == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listen.address, listen.port))
        sock.listen(listen.backlog)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot listen on {label(listen)}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def label(listen):
    host = f"[{listen.address}]" if listen.family == 6 else listen.address
    return f"{host}:{listen.port}"
