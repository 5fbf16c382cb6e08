"""What a slot would otherwise set up for itself the first time it uses
it, done once in the spawner before it forks any slot.

Runs in: the spawner (root), once, before malloc.fill_free_blocks() and
its first fork (supervisor/spawner.py).

Why: a slot is a copy-on-write copy of the spawner.  Some code a session
runs builds a table or fills a cache at its first use in a process, and
each slot would build its own copy in its private memory.  Built here,
once, the copy is in the image every slot shares.  Measured with
bench/session_memory.py (README, "Where a session's memory goes"):
- base64.b32encode builds a table of 1,024 two-byte strings at its first
  call; every maildrop open computes UIDL bases with it (uidl.base_text):
  about 100 kB per session;
- the first SHA-256 and BLAKE2b of a process, and the text codecs a
  session uses: about 25 kB more;
- the first local time of a process (a log line's timestamp, when
  logging to stderr: the C library loads the time zone): about 50 kB;
- a TLS front's first handshake makes OpenSSL fetch and cache the
  algorithms of the key exchange, the signature and the record cipher: a
  loopback handshake here, between the server context the fronts inherit
  and a throwaway client, saves about 150 kB per TLS front.

Nothing here reads a byte from outside popd but the time zone file the C
library loads for any local time: constant input, and a socketpair that
lives only inside this function.  No session state is left in the
server context either: it issues no tickets and the handshake is TLS 1.3
(tls.py).  A warm-up that fails costs memory, not correctness: it is
logged and the spawner goes on.
"""
import select
import socket
import ssl
import time

from popd.mail import maildrop, uidl
from popd.unix import logsetup, tls
from popd.unix.logsetup import log

# A From line and a header block, as uidl.base_text digests them.
_SAMPLE_HEAD = b"From a@b Thu Nov 26 10:00:00 2026\nSubject: warm-up\n"
# Bound on the loopback handshake: it needs four turns on an idle machine.
_HANDSHAKE_TURNS = 100
_HANDSHAKE_SECONDS = 5.0


def warm():
    """Run the first-use paths of a session's code (one maildrop's UIDL
    bases and state-file key, a log line's timestamp; a TLS handshake if
    TLS is configured)."""
    _warm_session()
    if tls.context() is not None:
        try:
            _warm_tls(tls.context())
        except (OSError, ValueError) as e:   # SSLError is an OSError
            log.warning("spawner: TLS warm-up handshake failed (%s); each TLS "
                        "front will set up OpenSSL's tables itself",
                        tls.reason(e) if isinstance(e, OSError) else e)


def _warm_session():
    uidl.base_id(_SAMPLE_HEAD)
    maildrop.state_key("/var/mail/warm-up")
    "warm-up".encode("ascii").decode("ascii")
    logsetup.timestamp()


def _warm_tls(server_ctx):
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE       # nothing to verify: our own end
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3   # no session ids to cache
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.setblocking(False)
        server = server_ctx.wrap_socket(ours, server_side=True,
                                        do_handshake_on_connect=False)
        client = client_ctx.wrap_socket(theirs, do_handshake_on_connect=False)
        with server, client:
            _handshake_both(server, client)
            tls.describe(server)
            client.sendall(b"NOOP\r\n")
            _read_some(server)
            server.sendall(b"+OK\r\n")
            _read_some(client)


def _handshake_both(server, client):
    pending = [server, client]
    deadline = time.monotonic() + _HANDSHAKE_SECONDS
    for _ in range(_HANDSHAKE_TURNS):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        select.select(pending, [], [], min(remaining, 0.1))
    if pending:
        raise ValueError("no handshake within the warm-up's bound")


def _read_some(end):
    ready, _, _ = select.select([end], [], [], _HANDSHAKE_SECONDS)
    if not ready or not end.recv(64):
        raise ValueError("no record within the warm-up's bound")
