"""The front's life after a TLS login: a plaintext pipe for its child.

Runs in: the front process (chrooted, no capabilities, seccomp-confined),
after the handover.  The child cannot take over a TLS session, so it
serves one end of a socketpair and the front moves bytes between the
other end and the TLS socket until either side closes.

Each direction is one Flow: a fixed buffer filled only when empty
(recv_into: no copies beyond the kernel's and OpenSSL's) and filled again
only once its sink has taken all of it, so memory stays at two buffers
whatever the peers do.  The buffers are anonymous mappings: a page is
memory only once bytes went through it, so the commands' direction costs
a page, and both are given back (with the heap OpenSSL freed) once the
pipe has been idle for limits.IDLE_AFTER: sessions mostly sit idle.
"""
import mmap
import select
import socket
import ssl

from popd import limits
from popd.unix import malloc, tls

# Each direction owns one buffer of this size, mapped once: big enough
# that a RETR moves in few system calls (the SSL layer cuts it into 16 KiB
# records itself), small beside the process.
PIPE_BUFFER = 64 * 1024


class Flow:
    """Bytes from `source` to `sink`; the ones in transit are view[start:end].

    fill() and drain() never block: an operation that would is noted in
    the caller's wait sets (for TLS, a read may wait to write and a write
    to read), and both say whether anything moved."""

    def __init__(self, source, sink, first=b""):
        self.source, self.sink = source, sink
        self.buffer = mmap.mmap(-1, PIPE_BUFFER, flags=mmap.MAP_PRIVATE)  # anonymous
        self.view = memoryview(self.buffer)
        self.view[:len(first)] = first      # the line reader never holds 64 KiB
        self.start, self.end = 0, len(first)
        self.eof = False                    # the source has ended
        self.sink_gone = False              # the sink refused bytes: it has closed

    def __len__(self):
        return self.end - self.start

    def release(self):
        """Give the buffer's pages back (it is empty: they read as zeros
        when next used)."""
        self.buffer.madvise(mmap.MADV_DONTNEED)

    def fill(self, rlist, wlist):
        if self or self.eof:
            return False
        try:
            n = self.source.recv_into(self.view)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            rlist.add(self.source)
            return False
        except ssl.SSLWantWriteError:
            wlist.add(self.source)
            return False
        except OSError:
            self.eof = True
            return True
        if n:
            self.start, self.end = 0, n
        else:
            self.eof = True
        return True

    def drain(self, rlist, wlist):
        if self and self.sink_gone:
            self.start = self.end           # nobody will ever read it
        if not self:
            return False
        try:
            self.start += self.sink.send(self.view[self.start:self.end])
        except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            wlist.add(self.sink)
            return False
        except ssl.SSLWantReadError:
            rlist.add(self.sink)
            return False
        except OSError:
            self.sink_gone = True
        return True


def pipe(client, child, first, idle_timeout):
    """Move bytes between the TLS client and the child's socketpair end
    until one side closes.  `first` is what the client had already sent
    past the login (pipelined commands); it goes to the child first.

    Decrypted bytes OpenSSL already holds (pending()) are drained before
    waiting on the socket.  When the child ends, what it wrote is
    delivered and then close_notify is sent; when the client ends, the
    child sees EOF.  The child closing its end (after QUIT) does not end
    the pipe: its last words may still be on their way to the client.  A
    side that stops taking bytes for idle_timeout ends the pipe (the child
    applies the same bound to the client while it is alive)."""
    client.setblocking(False)
    child.setblocking(False)
    up, down = Flow(client, child, first), Flow(child, client)
    child_shut = False              # the child was told the client is done
    try:
        while True:
            rlist, wlist = set(), set()
            progress = True
            while progress:
                # Not short-circuited: every step gets its turn, in order.
                progress = (up.fill(rlist, wlist) | up.drain(rlist, wlist)
                            | down.fill(rlist, wlist) | down.drain(rlist, wlist))
                if down.sink_gone:
                    return "client gone"    # reset: nobody to deliver to
                # Never wait on the socket while OpenSSL holds decrypted bytes.
                if not up and not up.eof and client.pending():
                    progress = True
            if up.eof and not up and not child_shut:
                # Like a TCP half-close: the child reads EOF after the
                # commands it was sent, answers them, and ends.
                child_shut = True
                try:
                    child.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if down.eof and not down:
                tls.close_notify(client)
                return "child closed"
            if not rlist and not wlist:
                return "nothing to wait for"    # cannot happen; never block forever
            if up or down:
                # Waiting for a peer to take bytes is bounded here.
                readable, writable, _ = select.select(list(rlist), list(wlist), [],
                                                      idle_timeout)
                if not readable and not writable:
                    return "stalled"
            else:
                # Waiting only for input may last (the child's idle timeout
                # bounds it).  Once idle, give back what the last replies used.
                readable, writable, _ = select.select(list(rlist), list(wlist), [],
                                                      limits.IDLE_AFTER)
                if not readable and not writable:
                    up.release()
                    down.release()
                    malloc.trim()
                    select.select(list(rlist), list(wlist), [])
    finally:
        child.close()
        client.close()
