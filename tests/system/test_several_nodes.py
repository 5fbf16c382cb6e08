"""Growing past one machine: two popd nodes behind Debian's haproxy
(PROXY protocol v2), one shared spool and state directory.

DESIGN.md, "Growing past one machine": "PROXY protocol v2 from trusted
addresses, so per-IP limits see the real client", the spool on shared
storage.  Proved here with the real haproxy and real clients bound to
127.0.0.2 and 127.0.0.3: popd logs and caps the client's address, not the
balancer's; a spoofed header from an untrusted peer is refused; one
session per maildrop holds across the nodes; mail delivered during a
session survives the other node's update; a node killed with SIGKILL in
the middle of an update loses nothing and the other node serves on.
"""
import os
import poplib
import shutil
import signal
import socket
import subprocess
import time

import pytest
import yaml

from popd import limits
from tests import replies
from tests.clients import SourcePOP3, msg
from tests.daemon import REPO, USERS, Daemon, kill_descendants
from tests.load_balancer import HAPROXY, Balancer, proxy_node, shared_dirs, v2_header

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY),
                                reason="haproxy is not installed (scripts/test-deps.sh)")


@pytest.fixture(scope="module")
def cluster():
    base, spool, state = shared_dirs()
    a = proxy_node(spool, state, limits={"max_per_ip": 2})
    b = proxy_node(spool, state, limits={"max_per_ip": 2})
    try:
        with a, b, Balancer([("a", a), ("b", b)]) as lb:
            yield a, b, lb, spool
    finally:
        shutil.rmtree(base, ignore_errors=True)


def deliver(spool, login, data):
    """Append as an MDA would (O_APPEND, under no lock popd holds)."""
    path = spool / login
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chown(path, USERS[login][1], USERS[login][2])


def fresh(spool, login, data):
    path = spool / login
    path.unlink(missing_ok=True)
    deliver(spool, login, data)


def pop(port, source, user="alice"):
    c = SourcePOP3("127.0.0.1", port, source, timeout=15)
    c.user(user)
    c.pass_(USERS[user][0])
    return c


def test_clients_behind_haproxy_are_logged_and_capped_by_their_own_address(cluster):
    a, b, lb, spool = cluster
    fresh(spool, "alice", msg(1))
    c = pop(lb.port, "127.0.0.5")
    c.quit()
    # Whichever node leastconn chose logged the client, not the balancer.
    deadline = time.monotonic() + 5
    while not any('session end: rip=127.0.0.5, user="alice"' in d.log() for d in (a, b)):
        assert time.monotonic() < deadline, a.log() + b.log()
        time.sleep(0.05)
    # Node a's per-address cap is 2: a third connection from 127.0.0.2 is
    # refused while 127.0.0.3 (behind the same balancer address) is served.
    held = [socket.create_connection(("127.0.0.1", lb.ports["a"]),
                                     source_address=("127.0.0.2", 0)) for _ in range(2)]
    try:
        for s in held:
            assert s.recv(200).startswith(replies.GREETING)
        third = socket.create_connection(("127.0.0.1", lb.ports["a"]),
                                         source_address=("127.0.0.2", 0), timeout=10)
        assert third.recv(200) == limits.REFUSAL_LINE
        third.close()
        other = SourcePOP3("127.0.0.1", lb.ports["a"], "127.0.0.3")
        assert other.getwelcome().startswith(replies.GREETING)
        other.quit()
    finally:
        for s in held:
            s.close()
    a.wait_for_log("connection closed before login: rip=127.0.0.3")
    assert "refused: rip=127.0.0.2, reason=per-ip" in a.log()


def test_a_spoofed_proxy_header_from_an_untrusted_peer_is_refused(cluster):
    a, b, lb, spool = cluster
    fresh(spool, "alice", msg(1))
    s = socket.create_connection(("127.0.0.1", a.port), source_address=("127.0.0.2", 0),
                                 timeout=10)
    s.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 4000 110\r\nUSER alice\r\n")
    assert s.recv(200) == limits.REFUSAL_LINE
    s.close()
    a.wait_for_log("refused: rip=127.0.0.2, reason=untrusted-proxy")
    # A trusted peer that sends no header is dropped too; others are served.
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.sendall(b"USER alice\r\n")
    a.wait_for_log("reason=bad-proxy-header")
    s.close()
    assert "203.0.113.9" not in a.log()
    c = pop(lb.ports["a"], "127.0.0.3")
    assert c.stat()[0] == 1
    c.quit()


def test_one_session_per_maildrop_across_the_nodes(cluster):
    a, b, lb, spool = cluster
    fresh(spool, "alice", msg(1))
    first = pop(lb.ports["a"], "127.0.0.2")
    try:
        second = SourcePOP3("127.0.0.1", lb.ports["b"], "127.0.0.3")
        second.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(USERS["alice"][0])
        second.close()
        # bob is not held by anyone: node b serves him.
        fresh(spool, "bob", msg(7))
        c = pop(lb.ports["b"], "127.0.0.3", user="bob")
        assert c.stat()[0] == 1
        c.quit()
    finally:
        first.quit()
    c = pop(lb.ports["b"], "127.0.0.3")     # free again once a's session quit
    c.quit()


def test_mail_delivered_during_a_session_survives_the_other_nodes_update(cluster):
    a, b, lb, spool = cluster
    fresh(spool, "alice", msg(1) + msg(2))
    c = pop(lb.ports["a"], "127.0.0.2")
    uidls = [line.split()[1] for line in c.uidl()[1]]
    c.dele(1)
    deliver(spool, "alice", msg(3))
    c.quit()
    c = pop(lb.ports["b"], "127.0.0.3")
    # Node b sees what a left, with the ids a gave (its state is shared).
    assert c.stat()[0] == 2
    assert [line.split()[1] for line in c.uidl()[1]][0] == uidls[1]
    c.dele(1)
    deliver(spool, "alice", msg(4))
    c.quit()
    assert (spool / "alice").read_bytes() == msg(3) + msg(4)


def committed(journal):
    """The journal carries its commit record (mbox_update.py's layout)."""
    try:
        with open(journal, "rb") as f:
            f.seek(120)
            return f.read(8) == b"popdcmit"
    except OSError:
        return False


@pytest.mark.parametrize("stage", ["writing the journal", "after the commit"])
def test_a_node_killed_mid_update_loses_nothing_and_the_other_serves_on(stage):
    base, spool, state = shared_dirs()
    big = b"".join(msg(i, extra=b"X-Pad: " + b"p" * 70 + b"\n" + (b"x" * 999 + b"\n") * 500)
                   for i in range(200))              # ~100 MB: the update takes a while
    a = proxy_node(spool, state)
    b = proxy_node(spool, state)
    try:
        with a, b, Balancer([("a", a), ("b", b)]) as lb:
            fresh(spool, "alice", msg(0) + big)
            c = pop(lb.ports["a"], "127.0.0.2")
            assert c.stat()[0] == 201
            c.dele(1)
            c.sock.sendall(b"QUIT\r\n")
            # Kill the whole node while its update is at `stage`.
            journal = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                journal = journal or next(state.glob("*/*.journal"), None)
                if journal and (stage == "writing the journal" or committed(journal)):
                    break
            kill_descendants(a.proc.pid)
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(10)
            c.close()
            assert journal is not None and journal.exists(), "the update was not caught"
            # Node b finds the journal a left and serves the maildrop.
            c = pop(lb.ports["b"], "127.0.0.3")
            count = c.stat()[0]
            c.quit()
            b.wait_for_log("interrupted update")
            assert "stale" not in b.log()
            assert not list(state.glob("*/*.journal*"))
            data = (spool / "alice").read_bytes()
            if stage == "after the commit":
                assert count == 200 and "interrupted update replayed" in b.log(), b.log()
            assert count in (200, 201)
            assert data == (big if count == 200 else msg(0) + big)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_shipped_haproxy_configuration_is_valid():
    run = subprocess.run([HAPROXY, "-c", "-f", str(REPO / "etc" / "haproxy" / "popd.cfg")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_implicit_tls_and_stls_listeners_take_the_header_before_tls():
    """The header comes first, then the handshake (implicit) or the
    greeting (STLS); the client's address reaches the session's log."""
    d = Daemon(tls=True, extra={"proxy_trusted_networks": ["127.0.0.1/32"]})
    cfg = yaml.safe_load(d.config.read_text())
    for listen in cfg["listen"]:
        listen["proxy"] = True
    d.config.write_text(yaml.safe_dump(cfg))
    with d:
        d.write_mbox("alice", msg(1))
        raw = socket.create_connection((d.host, d.tls_port), timeout=10)
        raw.sendall(v2_header("192.0.2.44", 4444))
        s = d.client_context().wrap_socket(raw, server_hostname="localhost")
        f = s.makefile("rb")
        assert f.readline().startswith(replies.GREETING)
        s.sendall(b"USER alice\r\nPASS " + USERS["alice"][0].encode() + b"\r\nQUIT\r\n")
        assert f.readline().startswith(b"+OK") and f.readline().startswith(b"+OK")
        s.close()
        d.wait_for_log('session start: rip=192.0.2.44, user="alice"')
        raw = socket.create_connection((d.host, d.port), timeout=10)
        raw.sendall(b"PROXY TCP6 2001:db8::45 ::1 4445 110\r\n")
        assert raw.makefile("rb").readline().startswith(replies.GREETING)
        raw.close()
        d.wait_for_log("connection closed before login: rip=2001:db8::45")
