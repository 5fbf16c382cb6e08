"""The supervisor's select turn (supervisor/loop.py, dispatch): a key that an
earlier callback of the same turn unregistered and closed is not called.

Found by the login benchmark: a child's pidfd and its socket became ready
in one turn, the exit handler closed the socket, and reading it raised
out of the loop, taking the supervisor (and so the service) down."""
import selectors
import socket

from popd.supervisor.loop import dispatch


def test_a_key_closed_earlier_in_the_turn_is_skipped():
    sel = selectors.DefaultSelector()
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    called = []

    def close_the_other(other):
        called.append("first")
        sel.unregister(other)
        other.close()

    def read(sock):
        called.append("second")
        sock.recv(1)

    # Both readable before the turn; whichever comes first closes the other.
    sel.register(a, selectors.EVENT_READ, (close_the_other, b))
    sel.register(b, selectors.EVENT_READ, (close_the_other, a))
    a_peer.send(b"x")
    b_peer.send(b"x")
    dispatch(sel, 1.0)
    assert called == ["first"]
    # A fd number reused by a new registration in the same turn is not
    # the old key either.
    c, c_peer = socket.socketpair()
    d, d_peer = socket.socketpair()
    sel2 = selectors.DefaultSelector()
    seen = []

    def replace(old):
        seen.append("replace")
        sel2.unregister(old)
        old.close()
        fresh, _ = socket.socketpair()
        sel2.register(fresh, selectors.EVENT_READ, (read_fresh, fresh))
        keep.append(_)

    def read_fresh(sock):
        seen.append("fresh")
    keep = []
    sel2.register(c, selectors.EVENT_READ, (replace, d))
    sel2.register(d, selectors.EVENT_READ, (replace, c))
    c_peer.send(b"x")
    d_peer.send(b"x")
    dispatch(sel2, 1.0)
    assert seen == ["replace"]
