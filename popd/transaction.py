"""POP3 TRANSACTION state: the commands of a logged-in session.

Runs in: the child, after it has become the mailbox owner and the front
has handed it the client socket.

Messages stream from the mbox in chunks (mbox.iter_message), so memory
stays bounded whatever their size.  Deletion and the UPDATE state arrive
with the crash-safe mailbox update; until then QUIT changes nothing.
"""
import time

from . import limits, mbox
from .protocol import Closing, Session, State

CAPABILITIES = [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
ERR_NO_SUCH_MESSAGE = "No such message"
# Flush a RETR to the socket whenever this much is queued.
STREAM_FLUSH = 256 * 1024


class ChildSession(Session):
    state = State.TRANSACTION

    def __init__(self, sock, cfg, mailbox_fd, index, leftover):
        super().__init__(sock, cfg.limits.max_bad_commands, leftover)
        self.idle_timeout = cfg.limits.idle_timeout
        self.fd = mailbox_fd
        self.index = index
        self.retrieved = 0
        self.bytes_sent = 0

    def deadline(self):
        return time.monotonic() + self.idle_timeout

    def write_timeout(self):
        return self.idle_timeout

    def message_number(self, arg):
        """'3' -> 2 (0-based), or None after answering -ERR."""
        if arg.isdigit() and len(arg) <= 10 and 1 <= int(arg) <= len(self.index):
            return int(arg) - 1
        self.err(ERR_NO_SUCH_MESSAGE)
        return None

    # -- commands ------------------------------------------------------------
    def cmd_capa(self):
        self.ok("Capability list follows")
        self.multiline(CAPABILITIES)

    def cmd_noop(self):
        self.ok()

    def cmd_quit(self):
        self.ok("Bye")
        raise Closing("quit")

    def cmd_stat(self):
        self.ok(f"{len(self.index)} {self.index.total_octets()}")

    def cmd_list(self, arg=None):
        if arg is not None:
            n = self.message_number(arg)
            if n is not None:
                self.ok(f"{n + 1} {self.index.octets(n)}")
            return
        self.ok(f"{len(self.index)} messages")
        self.multiline(f"{i + 1} {self.index.octets(i)}".encode()
                       for i in range(len(self.index)))

    def cmd_retr(self, arg):
        n = self.message_number(arg)
        if n is None:
            return
        self.ok(f"{self.index.octets(n)} octets")
        for chunk in mbox.iter_message(self.fd, self.index, n):
            self.out += chunk
            if len(self.out) >= STREAM_FLUSH:
                self.bytes_sent += len(self.out)
                self.flush()
        self.out += b".\r\n"
        self.bytes_sent += len(self.out)
        self.retrieved += 1


assert limits.MAX_COMMAND_LINE > 0
