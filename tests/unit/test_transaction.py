"""The TRANSACTION commands' output: byte-exact replies, one send for a
small RETR, big messages streamed in bounded sends, STAT/LIST/UIDL."""
import os

from popd.pop3 import transaction
from popd.pop3.transaction import ChildSession
from tests import stubs


class CountingSocket(stubs.ScriptedSocket):
    """Records each send() separately."""

    def __init__(self, chunks):
        super().__init__(chunks)
        self.sends = []

    def send(self, data):
        n = super().send(data)
        self.sends.append(bytes(data[:n]))
        return n


class Drop(stubs.StubMaildrop):
    """Closed by QUIT or by the test, whichever comes first."""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def serve(commands, data):
    """(each send, the ids, the octet counts) of one session."""
    drop = Drop(data)
    sock = CountingSocket([commands])
    try:
        session = ChildSession(sock, stubs.config(), drop, b"")
        assert session.serve() == "quit"
        octets = [drop.index.octets(n) for n in range(len(drop.index))]
        return sock.sends, drop.ids(), octets
    finally:
        sock.close()
        drop.close()


def message(subject, body):
    return b"From a@b Thu Nov 26 10:00:00 2026\nSubject: %s\n\n%s\n" % (subject, body)


def wire(subject, body):
    """RFC 1939 by hand (LF bodies): CRLF lines, dots stuffed, terminator."""
    text = (b"Subject: %s\n\n%s" % (subject, body)).replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def test_small_retr_is_one_send_with_status_and_terminator():
    sends, _, octets = serve(b"RETR 1\r\nRETR 2\r\nQUIT\r\n",
                             message(b"one", b".dot\nx\n") + message(b"two", b"y"))
    assert sends[0] == b"+OK %d octets\r\n" % octets[0] + wire(b"one", b".dot\nx\n")
    assert sends[1] == b"+OK %d octets\r\n" % octets[1] + wire(b"two", b"y")


def test_big_retr_streams_byte_exact_in_bounded_sends():
    line = b".starts with a dot, then text\n"
    body = line * (3 * transaction.STREAM_CHUNK // len(line)) + b"last"
    sends, _, octets = serve(b"RETR 1\r\nLIST\r\nQUIT\r\n",
                             message(b"big", body) + message(b"small", b"z"))
    assert b"".join(sends[:-2]) == b"+OK %d octets\r\n" % octets[0] + wire(b"big", body)
    assert len(sends) > 4
    assert all(len(s) <= 2 * transaction.STREAM_CHUNK + 600 for s in sends)
    assert sends[-2] == b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n" % tuple(octets)


def test_stat_list_uidl_after_dele():
    data = message(b"one", b"a") + message(b"two", b"bb") + message(b".three", b"c")
    sends, ids, octets = serve(b"DELE 2\r\nSTAT\r\nLIST\r\nUIDL\r\nQUIT\r\n", data)
    assert sends[1] == b"+OK 2 %d\r\n" % (octets[0] + octets[2])
    assert sends[2] == b"+OK 2 messages\r\n1 %d\r\n3 %d\r\n.\r\n" % (octets[0], octets[2])
    assert sends[3] == (b"+OK Unique-ID listing follows\r\n1 %s\r\n3 %s\r\n.\r\n"
                        % (ids[0].encode(), ids[2].encode()))


def test_quit_releases_the_maildrop_before_its_answer():
    """RFC 1939: the locks go before +OK, so a client that logs in again the
    moment it reads the answer never finds its own session holding them."""
    sock = CountingSocket([b"DELE 1\r\nQUIT\r\n"])

    class Recording(stubs.StubMaildrop):
        closed_after = None

        def close(self):
            if self.closed_after is None:
                self.closed_after = b"".join(sock.sends)
            super().close()

    drop = Recording()
    session = ChildSession(sock, stubs.config(10), drop, b"")
    session.serve()
    assert drop.updated == {0}
    assert b"+OK Bye" not in drop.closed_after
    assert b"+OK Bye" in b"".join(sock.sends)


def test_a_mailbox_shortened_under_a_retr_ends_the_session_unfinished():
    """Only a writer that ignores the locks can truncate the file under a
    session: RETR then cannot finish, and must not end a short message
    with the terminator as if it were whole.  The session ends, without
    QUIT's update (nothing is deleted) and without a traceback."""
    drop = Drop(message(b"one", b"a" * 100) + message(b"two", b"b"))
    os.ftruncate(drop.fd, 40)
    sock = CountingSocket([b"DELE 2\r\nRETR 1\r\nQUIT\r\n"])
    try:
        session = ChildSession(sock, stubs.config(), drop, b"")
        assert session.serve() == "mailbox changed under the session"
        sent = b"".join(sock.sends)
        assert sent == b"+OK Message 2 deleted\r\n", sent
        assert drop.updated is None
    finally:
        sock.close()
        drop.close()
