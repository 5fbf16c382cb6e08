"""TLS and SASL end to end: STLS and implicit TLS on the real daemon, the
front as a plaintext pipe, the handshake under the login deadline, no
resumption across fronts, STLS command injection, AUTH PLAIN, and the
start-up errors for bad certificates and keys."""
import os
import poplib
import socket
import ssl
import struct
import time

import pytest
import yaml

from popd import limits
from popd.pop3 import sasl
from popd.unix import privileges
from tests import replies
from tests.clients import CAROL, MBOX, OCTETS, USERS_TLS, Client
from tests.daemon import (LOGIN_UID, USERS, Daemon, caps, gone, in_child, parents,
                          socket_kinds, status)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

NO_CAPS = "0000000000000000"
BASE_CAPA = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
POLICY_CAPA = [b"EXPIRE NEVER"]     # mail.expire_days unset, no login_delay
PLAIN_CAPA = [b"USER", b"SASL PLAIN"]
def nothing_arrives(client, seconds=0.5):
    client.sock.settimeout(seconds)
    try:
        data = client.sock.recv(100)
    except (socket.timeout, TimeoutError):
        data = None
    client.sock.settimeout(10)
    return data is None and client.buf == b""


@pytest.fixture(scope="module")
def popd():
    with Daemon(tls=True, users=USERS_TLS,
                limits={"max_children": 16, "max_per_ip": 16}) as d:
        d.write_mbox("alice", MBOX)
        d.write_mbox("carol", MBOX, uid=CAROL[1])
        yield d


# -- CAPA and the plaintext policy ---------------------------------------------

def test_capa_follows_the_connection(popd):
    c = Client.connect(popd)
    assert c.line() == replies.GREETING
    assert c.capa() == BASE_CAPA + [b"STLS"] + POLICY_CAPA   # tls-only: no USER, no SASL
    c.starttls(popd)
    assert c.capa() == BASE_CAPA + PLAIN_CAPA + POLICY_CAPA   # no STLS inside TLS
    c.close()
    c = Client.implicit(popd)
    assert c.line() == replies.GREETING
    assert c.capa() == BASE_CAPA + PLAIN_CAPA + POLICY_CAPA
    c.close()


def test_plaintext_credentials_are_refused_in_the_clear(popd):
    before = popd.log().count("auth failed")
    c = Client.connect(popd)
    c.line()
    for cmd in (b"USER alice", b"PASS " + USERS["alice"][0].encode(), b"AUTH",
                b"AUTH PLAIN " + sasl.encode_plain("alice", USERS["alice"][0])):
        assert c.command(cmd) == replies.NEED_TLS
    c.starttls(popd)                                    # the same connection goes on
    c.login()
    assert c.command(b"STAT") == b"+OK 2 %d" % sum(OCTETS)
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    assert popd.log().count("auth failed") == before    # the broker was never asked


# -- STLS ------------------------------------------------------------------------

def test_stls_injection_is_discarded(popd):
    c = Client.connect(popd)
    c.line()
    c.send(b"STLS\r\nCAPA\r\n")                         # one segment
    assert c.line() == replies.BEGIN_TLS
    c.wrap(popd.client_context())
    assert nothing_arrives(c)                           # no CAPA answer inside TLS
    assert c.capa() == BASE_CAPA + PLAIN_CAPA + POLICY_CAPA
    c.close()
    popd.wait_for_log("discarding 6 bytes sent before the handshake")

    # Injected USER is not executed either, and STLS forgets any earlier USER.
    c = Client.connect(popd)
    c.line()
    c.send(b"STLS\r\nUSER alice\r\n")
    assert c.line() == replies.BEGIN_TLS
    c.wrap(popd.client_context())
    assert nothing_arrives(c)
    assert c.command(b"PASS " + USERS["alice"][0].encode()) == b"-ERR Send USER first"
    c.close()


def test_stls_refused_twice_on_implicit_and_after_login(popd):
    c = Client.connect(popd)
    c.line()
    c.starttls(popd)
    assert c.command(b"STLS") == replies.TLS_ACTIVE
    c.login()
    assert c.command(b"STLS") == replies.BAD_STATE      # the child's answer
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    c = Client.implicit(popd)
    c.line()
    assert c.command(b"STLS") == replies.TLS_ACTIVE
    c.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_0_and_1_1_are_refused(popd):
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(popd.ca_file))
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")          # let the client offer it
        ctx.minimum_version = ctx.maximum_version = version
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|protocol version"):
            Client.implicit(popd, ctx)
        c = Client.connect(popd)
        c.line()
        assert c.command(b"STLS") == replies.BEGIN_TLS
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|protocol version"):
            c.wrap(ctx)
        c.close()
    popd.wait_for_log("reason=UNSUPPORTED_PROTOCOL")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_are_not_resumable(popd, version):
    ctx = popd.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    first = Client.implicit(popd, ctx)
    assert first.line() == replies.GREETING             # TLS 1.3 tickets would be here
    assert first.command(b"QUIT").startswith(b"+OK")
    session = first.sock.session
    first.close()
    second = Client.implicit(popd, ctx, session=session)   # served by another front
    assert second.line() == replies.GREETING
    assert not second.sock.session_reused
    assert not session.has_ticket
    assert second.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                     ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    second.close()


def test_alpn_pop3_is_offered_not_required(popd):
    ctx = popd.client_context()
    ctx.set_alpn_protocols(["pop3"])
    c = Client.implicit(popd, ctx)
    assert c.sock.selected_alpn_protocol() == "pop3"
    c.close()
    ctx = popd.client_context()
    ctx.set_alpn_protocols(["http/1.1"])
    c = Client.implicit(popd, ctx)
    assert c.sock.selected_alpn_protocol() is None
    assert c.line() == replies.GREETING
    c.close()


# -- the pipe --------------------------------------------------------------------

def test_close_notify_ends_every_tls_connection(popd):
    for logged_in in (False, True):
        c = Client.implicit(popd, suppress_ragged_eofs=False)
        c.line()
        if logged_in:
            c.login()
        assert c.command(b"QUIT").startswith(b"+OK")
        assert c.sock.recv(100) == b""                  # SSLEOFError without close_notify
        c.close()


def test_pipelined_login_and_large_message_through_the_pipe(popd):
    body = b"".join(b"line %07d " % i + b"x" * 60 + b"\n" for i in range(60000))
    big = (b"From big@example.org Thu Nov 26 12:00:00 2026\n"
           b"From: big@example.org\nSubject: big\n\n" + body + b"\n")
    popd.write_mbox("carol", MBOX + big, uid=CAROL[1])
    try:
        c = Client.implicit(popd)
        c.line()
        c.send(b"USER carol\r\nPASS " + CAROL[0].encode() + b"\r\nSTAT\r\nRETR 3\r\n"
               b"RETR 1\r\nQUIT\r\n")
        assert c.line() == b"+OK"
        assert c.line() == replies.LOGGED_IN
        assert c.line().startswith(b"+OK 3 ")
        assert c.line().startswith(b"+OK")
        expected = b"From: big@example.org\r\nSubject: big\r\n\r\n" + body.replace(b"\n", b"\r\n")
        assert b"\r\n".join(c.multiline()) + b"\r\n" == expected
        assert c.line().startswith(b"+OK")
        assert c.multiline()[0] == b"From: a@example.org"
        assert c.line().startswith(b"+OK Bye")
        c.close()
    finally:
        popd.write_mbox("carol", MBOX, uid=CAROL[1])


def child_and_front(popd):
    (child,) = popd.wait_for_pids("child session", 1)
    parent = parents()
    fronts = [pid for pid in popd.pids("front") if parent.get(pid) == child]
    return child, fronts


def wait_gone(pids, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)
    return all(gone(p) for p in pids)


def test_front_stays_as_an_unprivileged_pipe(popd):
    # The spawner's loopback handshake (slot/warmup.py) works with this
    # certificate: every front inherits what it set up.
    assert "warm-up" not in popd.log()
    c = Client.implicit(popd)
    c.line()
    c.login()
    assert c.command(b"STAT").startswith(b"+OK")
    child, fronts = child_and_front(popd)
    assert len(fronts) == 1
    front = fronts[0]
    st = status(front)
    assert st["Uid"].split() == [str(LOGIN_UID)] * 4
    assert caps(st) == (NO_CAPS, NO_CAPS, NO_CAPS)
    assert os.readlink(f"/proc/{front}/root") == str(popd.base / "empty")
    # The front: the client's TCP socket and its end of the socketpair; the
    # channels to the broker and the child are closed.
    kinds = socket_kinds(front)
    assert kinds == {"/dev/null": 3, "tcp": 1, "unix": 1}, kinds
    # The child never touches the TCP socket: it reads the socketpair.
    kinds = socket_kinds(child)
    assert "tcp" not in kinds and kinds.get("unix") == 2, kinds   # supervisor + pipe
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    assert wait_gone([child, front])


def private_dirty_kb(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Private_Dirty in smaps_rollup")


def test_an_idle_tls_pipe_gives_back_its_buffers(popd):
    """The pipe's buffers are anonymous mappings the front gives back, with
    the heap OpenSSL freed, once the client is quiet (limits.IDLE_AFTER):
    after a RETR of 1 MB the reply's buffer alone is 64 kB."""
    body = (b"y" * 63 + b"\n") * 16384
    popd.write_mbox("carol", b"From a@b Thu Nov 26 10:00:00 2026\nSubject: big\n\n"
                    + body + b"\n", uid=CAROL[1])
    try:
        c = poplib.POP3_SSL(popd.host, popd.tls_port, context=popd.client_context(),
                            timeout=10)
        c.user("carol")
        c.pass_(CAROL[0])
        child, (front,) = child_and_front(popd)
        assert status(front)["Seccomp"] == "2"        # what it calls is in the filter
        assert len(b"".join(c.retr(1)[1])) > len(body) - 20000
        busy = private_dirty_kb(front)                # within IDLE_AFTER of the reply
        time.sleep(limits.IDLE_AFTER + 1.0)
        idle = private_dirty_kb(front)
        assert busy - idle >= 64, (busy, idle)
        assert c.stat()[0] == 1                       # and the pipe goes on
        assert len(b"".join(c.retr(1)[1])) > len(body) - 20000
        c.quit()
    finally:
        popd.write_mbox("carol", MBOX, uid=CAROL[1])


def test_a_front_cannot_open_the_key_file(popd):
    """The fronts hold the context, never the file: the same sandbox as a
    real front (privileges.sandbox_front) cannot open it."""
    key = str(popd.base / "key.pem")
    assert open(key, "rb").read(10)                     # root can

    def attack():
        privileges.sandbox_front(str(popd.base / "empty"), LOGIN_UID, LOGIN_UID)
        for path in (key, "/key.pem", "key.pem"):
            try:
                open(path, "rb")
                return 1
            except OSError:
                pass
        return 0
    assert in_child(attack) == 0

    # Nor could the login user outside the chroot (the key's own mode), and
    # no front holds a descriptor to it.
    def as_login_user():
        os.setgroups([])
        os.setresgid(LOGIN_UID, LOGIN_UID, LOGIN_UID)
        os.setresuid(LOGIN_UID, LOGIN_UID, LOGIN_UID)
        try:
            open(key, "rb")
            return 1
        except PermissionError:
            return 0
    assert in_child(as_login_user) == 0
    fronts = popd.pids("front")
    assert fronts
    for pid in fronts:
        fds = f"/proc/{pid}/fd"
        targets = [os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds)]
        assert targets and key not in targets, targets


def test_client_vanishing_ends_child_and_front(popd):
    c = Client.implicit(popd)
    c.line()
    c.login()
    child, (front,) = child_and_front(popd)
    c.close()                           # no close_notify, no QUIT
    assert wait_gone([child, front])
    popd.wait_for_log("reason=disconnected")


def test_a_client_that_resets_before_the_handshake_is_no_internal_error(popd):
    """Connect to the implicit TLS port and reset at once, or send bytes
    and close: Python's wrap_socket itself sees that, before any
    handshake.  Each is one failed handshake in the log, never a front's
    traceback, and others are still served."""
    start = len(popd.log())
    for i in range(10):
        s = socket.create_connection((popd.host, popd.tls_port))
        if i % 2:
            s.sendall(b"\x16\x03\x01\x00")          # the start of a ClientHello
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                                   # RST
    deadline = time.monotonic() + 15
    failed = "front: TLS handshake failed: rip="
    while popd.log()[start:].count(failed) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = popd.log()[start:]
    assert "internal error" not in log and "Traceback" not in log, log
    assert log.count(failed) == 10, log
    c = Client.implicit(popd)
    c.line()
    c.login()
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()


# -- SASL ------------------------------------------------------------------------

def test_auth_plain_dialogue(popd):
    before = popd.log().count("auth failed")
    c = Client.implicit(popd)
    c.line()
    assert c.command(b"AUTH") == b"+OK Mechanisms follow"
    assert c.multiline() == [b"PLAIN"]
    assert c.command(b"AUTH CRAM-MD5") == replies.SASL_MECHANISM
    assert c.command(b"AUTH PLAIN") == replies.SASL_CONTINUE
    assert c.command(b"*") == replies.SASL_CANCELLED
    assert c.command(b"AUTH PLAIN") == replies.SASL_CONTINUE
    assert c.command(b"not base64!") == replies.SASL_MALFORMED
    assert c.command(b"AUTH PLAIN") == replies.SASL_CONTINUE
    assert c.command(b"A" * 3000) == replies.SASL_TOO_LONG        # drained, not buffered
    assert c.command(b"AUTH PLAIN =") == replies.SASL_MALFORMED
    assert c.command(b"AUTH PLAIN " + sasl.encode_plain("alice", "x", authzid="bob")) \
        == replies.SASL_AUTHZID
    assert popd.log().count("auth failed") == before              # none reached the broker
    assert c.command(b"AUTH PLAIN " + sasl.encode_plain("alice", "wrong")) \
        == replies.AUTH_FAILED
    assert c.command(b"AUTH plain") == replies.SASL_CONTINUE
    assert c.command(sasl.encode_plain("alice", USERS["alice"][0], authzid="alice")) \
        == replies.LOGGED_IN
    assert c.command(b"STAT") == b"+OK 2 %d" % sum(OCTETS)
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    popd.wait_for_log("login: rip=127.0.0.1, method=PLAIN")


def test_auth_plain_initial_response(popd):
    c = Client.implicit(popd)
    c.line()
    assert c.command(b"AUTH PLAIN " + sasl.encode_plain("alice", USERS["alice"][0])) \
        == replies.LOGGED_IN
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()


def test_auth_plain_long_secret_without_initial_response(popd):
    c = Client.implicit(popd)
    c.line()
    assert c.command(b"AUTH PLAIN") == replies.SASL_CONTINUE
    assert c.command(sasl.encode_plain("carol", CAROL[0])) == replies.LOGGED_IN
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()


def test_auth_plain_long_initial_response(popd):
    response = sasl.encode_plain("carol", CAROL[0])
    assert 40 < len(response) < 200
    c = Client.implicit(popd)
    c.line()
    assert c.command(b"AUTH PLAIN " + response) == replies.LOGGED_IN
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()


# -- deadlines and versions: a strict daemon -----------------------------------------

def client_hello_prefix():
    """The first bytes of a real ClientHello: a handshake left half-done."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()[:40]


def configured(d, **tls_keys):
    """Add keys to the daemon's `tls:` section before it starts."""
    cfg = yaml.safe_load(d.config.read_text())
    cfg["tls"].update(tls_keys)
    d.config.write_text(yaml.safe_dump(cfg))
    return d


def test_handshake_is_bounded_by_the_login_deadline():
    with configured(Daemon(tls=True, limits={"login_deadline": 5}),
                    min_version="TLSv1.3") as d:
        d.write_mbox("alice", MBOX)
        silent = socket.create_connection((d.host, d.tls_port))
        partial = socket.create_connection((d.host, d.tls_port))
        partial.sendall(client_hello_prefix())
        stls = Client.connect(d)
        assert stls.line() == replies.GREETING
        assert stls.command(b"STLS") == replies.BEGIN_TLS      # and then nothing
        start = time.monotonic()
        for sock in (silent, partial, stls.sock):
            assert closed_within(sock, 15) is not None
        assert 3.5 < time.monotonic() - start < 7
        d.wait_for_log("reason=timeout", count=3)
        assert "killing the front" not in d.log()               # the front did it itself

        # tls.min_version: TLSv1.3 refuses TLS 1.2 and serves TLS 1.3.
        ctx = d.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            Client.implicit(d, ctx)
        c = Client.implicit(d)
        assert c.sock.version() == "TLSv1.3"
        c.line()
        c.login()
        assert c.command(b"QUIT").startswith(b"+OK")
        c.close()


def closed_within(sock, timeout):
    """Seconds until the server closed `sock` (EOF or reset), or None."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (socket.timeout, TimeoutError):
        return None
    except OSError:
        pass
    return time.monotonic() - start


# -- start-up errors ------------------------------------------------------------

def _break(d, breakage):
    cert, key = d.base / "cert.pem", d.base / "key.pem"
    if breakage == "missing-cert":
        cert.unlink()
    elif breakage == "key-readable":
        os.chmod(key, 0o644)
    elif breakage == "mismatch":
        import trustme
        other = trustme.CA().issue_cert("localhost", common_name="localhost")
        other.private_key_pem.write_to_path(str(key))
    elif breakage == "garbage-cert":
        cert.write_text("not a certificate\n")
    return {"cert": cert, "key": key}


@pytest.mark.parametrize("breakage,expected", [
    # These two are found by the start-up checks of every trusted file.
    ("missing-cert", "{cert} (tls.cert): No such file or directory"),
    ("key-readable", "{key} (owner 0, mode 0644) (tls.key) is readable by "
                     "others; run: chmod o-r {key}"),
    ("mismatch", "tls.key: {key} does not match the certificate in {cert}"),
    ("garbage-cert", "tls.cert: {cert} holds no PEM certificate"),
])
def test_bad_certificate_or_key_stops_start_up(breakage, expected):
    d = Daemon(tls=True)
    try:
        paths = _break(d, breakage)
        d.start(wait=False)
        assert d.proc.wait(30) == 1
        lines = [line for line in d.log().splitlines() if line.startswith("popd: ")]
        assert lines == ["popd: " + expected.format(**paths)], d.log()
        assert "Traceback" not in d.log()
    finally:
        d.__exit__(None, None, None)


# -- a cleartext listener with auth.plaintext: always --------------------------------

def test_cleartext_listener_with_plaintext_always():
    with Daemon(plaintext="always", extra={"implementation": "popd"}) as d:
        d.write_mbox("alice", MBOX)
        c = Client.connect(d)
        c.line()
        assert c.capa() == BASE_CAPA + PLAIN_CAPA + POLICY_CAPA + [b"IMPLEMENTATION popd"]
        assert c.command(b"STLS") == replies.NO_STLS
        assert c.command(b"AUTH PLAIN " + sasl.encode_plain("alice", USERS["alice"][0])) \
            == replies.LOGGED_IN
        assert c.command(b"STAT") == b"+OK 2 %d" % sum(OCTETS)
        assert c.command(b"QUIT").startswith(b"+OK")
        c.close()
