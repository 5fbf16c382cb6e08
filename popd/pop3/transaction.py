"""POP3 TRANSACTION and UPDATE states: the commands of a logged-in session.

Runs in: the child, after it has become the mailbox owner and the front
has handed it the client socket (or, on TLS, its plaintext pipe).

Messages stream from the mbox in chunks (mbox.iter_message), so memory
stays bounded whatever their size.  DELE only marks; QUIT applies the
marks through the crash-safe update (maildrop.py); a dropped connection
or a timeout deletes nothing.
"""
import time

from popd import limits
from popd.mail import mbox
from popd.mail.maildrop import MailboxError
from popd.pop3.protocol import (SESSION_CAPABILITIES, TERMINATOR, Closing, Session, State,
                                policy_capabilities)
from popd.unix import malloc
from popd.unix.logsetup import log

ERR_NO_SUCH_MESSAGE = "No such message"
ERR_DELETED = "Message is deleted"
ERR_BAD_COUNT = "Invalid line count"
# RETR/TOP read and transform the mbox in pieces of this size: large enough
# that per-piece Python overhead vanishes, small enough to bound memory.
STREAM_CHUNK = 256 * 1024


class ChildSession(Session):
    state = State.TRANSACTION

    def __init__(self, sock, cfg, maildrop, leftover):
        super().__init__(sock, cfg.limits.max_bad_commands, leftover)
        self.idle_timeout = cfg.limits.idle_timeout
        # RFC 2449: after login, the policies that apply to this user (the
        # same for every user here).
        self.capabilities = SESSION_CAPABILITIES + policy_capabilities(cfg)
        self.drop = maildrop
        self.index = maildrop.index
        self.deleted = set()
        self.retrieved = set()      # message numbers RETR sent whole (EXPIRE counts them)
        self.bytes_sent = 0
        self.removed = 0
        self.expired = 0
        # report(session): told how the session goes, at most every
        # limits.PROGRESS_INTERVAL (child.py passes it to the supervisor).
        self.report = None
        self.next_report = 0.0
        self.trim_due = False       # a large reply's buffers were freed: trim once sent

    def deadline(self):
        return time.monotonic() + self.idle_timeout

    def after_command(self):
        now = time.monotonic()
        if self.report is not None and now >= self.next_report:
            self.next_report = now + limits.PROGRESS_INTERVAL
            self.report(self)

    def write_timeout(self):
        return self.idle_timeout

    def message(self, arg):
        """'3' -> 2 (0-based), or None after answering -ERR."""
        if not (arg.isdigit() and len(arg) <= 10 and 1 <= int(arg) <= len(self.index)):
            self.err(ERR_NO_SUCH_MESSAGE)
            return None
        n = int(arg) - 1
        if n in self.deleted:
            self.err(ERR_DELETED)
            return None
        return n

    def live(self):
        return (n for n in range(len(self.index)) if n not in self.deleted)

    # -- commands ------------------------------------------------------------
    def cmd_capa(self):
        self.ok("Capability list follows")
        self.multiline(self.capabilities)

    def cmd_noop(self):
        self.ok()

    def cmd_stat(self):
        # The index's total (summed in C) less the few marked messages.
        octets = self.index.total_octets() - sum(self.index.octets(n) for n in self.deleted)
        self.ok(f"{len(self.index) - len(self.deleted)} {octets}")

    def cmd_list(self, arg=None):
        if arg is not None:
            n = self.message(arg)
            if n is not None:
                self.ok(f"{n + 1} {self.index.octets(n)}")
            return
        self.ok(f"{len(self.index) - len(self.deleted)} messages")
        octets = self.index.columns()[3]
        self.listing(f"{n + 1} {octets[n]}\r\n" for n in self.live())

    def cmd_uidl(self, arg=None):
        if arg is not None:
            n = self.message(arg)
            if n is not None:
                self.ok(f"{n + 1} {self.drop.ids()[n]}")
            return
        ids = self.drop.ids()
        self.ok("Unique-ID listing follows")
        self.listing(f"{n + 1} {ids[n]}\r\n" for n in self.live())

    def listing(self, lines):
        """A LIST or UIDL listing: its lines start with a message number,
        so none needs dot-stuffing, and they are joined in one go (100,000
        lines: a few ms instead of tens through multiline())."""
        self.out += "".join(lines).encode("ascii")
        self.out += TERMINATOR

    def cmd_retr(self, arg):
        n = self.message(arg)
        if n is not None:
            self.ok(f"{self.index.octets(n)} octets")
            self.stream(mbox.iter_message(self.drop.fd, self.index, n, STREAM_CHUNK))
            self.retrieved.add(n)

    def cmd_top(self, arg, count):
        n = self.message(arg)
        if n is None:
            return
        if not count.isdigit() or len(count) > 9:
            self.err(ERR_BAD_COUNT)
            return
        self.ok("Top of message follows")
        self.stream(mbox.iter_top(self.drop.fd, self.index, n, int(count), STREAM_CHUNK))

    def stream(self, chunks):
        """Write a message's chunks after the status line.  Small pieces
        gather in the reply buffer, so that a message under STREAM_CHUNK
        leaves in one send with its status line and terminator (the serve
        loop flushes it): one syscall and one packet per RETR, which is
        what one-command-at-a-time clients wait on.  A full-size chunk is
        sent as it is, after whatever is queued, never copied."""
        before = self.bytes_sent
        try:
            for chunk in chunks:
                self.bytes_sent += len(chunk)
                if len(chunk) >= STREAM_CHUNK and not self.out:
                    self.send_all(chunk)
                    continue
                self.out += chunk
                if len(self.out) >= STREAM_CHUNK:
                    self.flush()
        except (mbox.MboxChangedError, OSError) as e:
            # Only a writer that ignores the locks can shorten the file
            # under a session.  A short message must not end with the
            # terminator as if whole: end the session instead (without
            # QUIT, nothing is deleted).
            log.error("mailbox %s: cannot read it while sending (%s); ending the "
                      "session", self.drop.path, e)
            self.out.clear()
            raise Closing("mailbox changed under the session") from None
        self.out += TERMINATOR
        self.bytes_sent += len(TERMINATOR)
        if self.bytes_sent - before >= malloc.LARGE_BLOCK:
            self.trim_due = True

    def flush(self):
        super().flush()
        if self.trim_due:
            # The reply's large reads are freed now; without a trim the heap
            # they came from stays with the session (unix/malloc.py).  Done
            # once the client is idle, not between pipelined RETRs: a trim
            # costs the next large read its page faults again.
            self.trim_due = False
            self.reader.on_idle = malloc.trim

    def cmd_dele(self, arg):
        n = self.message(arg)
        if n is not None:
            self.deleted.add(n)
            self.ok(f"Message {n + 1} deleted")

    def cmd_rset(self):
        self.deleted.clear()
        self.ok(f"{len(self.index)} messages")

    def cmd_quit(self):
        self.state = State.UPDATE
        expired = self.drop.expiring(self.retrieved) - self.deleted
        try:
            self.drop.update(self.deleted | expired, self.retrieved)
        except MailboxError as e:
            self.err(e.text, code=e.code)
            raise Closing("update failed") from None
        self.removed, self.expired = len(self.deleted), len(expired)
        # Locks go before the +OK (RFC 1939: release, then respond): a
        # client that reconnects as soon as it reads the answer must not
        # find its own finished session still holding the maildrop.
        self.drop.close()
        self.ok(f"Bye, {self.removed} message(s) deleted"
                + (f", {self.expired} expired" if self.expired else ""))
        raise Closing("quit")
