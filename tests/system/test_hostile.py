"""Hostile clients against the live daemon: abusive input, slow and idle
clients, pool exhaustion, garbage on the broker's channel.  Every test
ends by showing the server still serves."""
import ctypes
import os
import socket
import subprocess
import time

import pytest

from popd import ipc
from tests import replies
from tests.clients import MBOX, connect_raw, login
from tests.daemon import USERS, Daemon, descendants, title

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


def still_serves(d):
    c = login(d)
    assert c.stat()[0] == 2
    c.quit()


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


@pytest.mark.parametrize("payload,expected", [
    (b"PASS " + b"a" * 5000 + b"\r\nCAPA\r\n", [replies.LINE_TOO_LONG, b"+OK"]),
    (b"USER al\x00ice\r\n", [b"-ERR Invalid characters in command"]),
    (b"USER \xc3\x28\xa0\xa1\r\n", [b"-ERR Invalid characters in command"]),
    (b"CAPA\rSTAT\r\n", [b"-ERR Invalid characters in command"]),
    (b"CAPA garbage\r\n", [b"-ERR Wrong number of arguments"]),
    (b"\r\n", [replies.UNKNOWN]),
    (b"GET / HTTP/1.1\r\n", [replies.UNKNOWN]),
])
def test_abusive_lines_get_one_clear_error(popd, payload, expected):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(payload)
    for want in expected:
        assert f.readline().startswith(want)
    s.close()
    still_serves(popd)


def test_errors_never_echo_client_input(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"XYZZY-MARKER\r\nUSER MARKER-TOO\r\nPASS MARKER-PW\r\nSTAT MARKER\r\n")
    out = b"".join(f.readline() for _ in range(4))
    assert b"MARKER" not in out
    s.close()


def test_line_without_crlf_is_answered_at_once_and_closed_past_the_drain_bound(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"A" * 300)
    assert f.readline().rstrip() == replies.LINE_TOO_LONG        # no wait for CRLF
    s.sendall(b"A" * 100 * 1024)                                  # 100 KB, no CRLF
    assert f.readline().rstrip() == b"-ERR Line too long, closing connection"
    assert f.read() == b""
    still_serves(popd)


def test_bad_command_budget_closes_the_connection():
    with Daemon(limits={"max_bad_commands": 3}) as d:
        s, f = connect_raw(d)
        f.readline()
        s.sendall(b"FOO\r\n" * 10)
        lines = [f.readline().rstrip() for _ in range(4)]
        assert lines == [replies.UNKNOWN] * 3 + [replies.TOO_MANY_BAD]
        assert f.read() == b""


def test_idle_client_is_dropped_after_idle_timeout():
    with Daemon(limits={"idle_timeout": 10}) as d:
        d.write_mbox("alice", MBOX)
        c = login(d)
        started = time.monotonic()
        c.sock.settimeout(30)
        assert c.file.readline().rstrip() == b"-ERR Disconnected for inactivity"
        elapsed = time.monotonic() - started
        assert 9 < elapsed < 13
        print(f"idle client dropped after {elapsed:.1f} s (idle_timeout 10)")
        assert (d.spool / "alice").read_bytes() == MBOX       # nothing deleted


def test_trickling_client_cannot_outlast_the_login_deadline():
    with Daemon(limits={"login_deadline": 6}) as d:
        s, f = connect_raw(d)
        f.readline()
        started = time.monotonic()
        s.settimeout(20)
        closed_at = None
        for byte in b"USER alice\r\nPASS x\r\n" * 3:
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.5)
            if time.monotonic() - started > 12:
                break
        data = f.read()
        closed_at = time.monotonic() - started
        assert b"-ERR Login timed out" in data
        assert closed_at < 9


def test_300_connections_from_one_address_do_not_lock_out_another():
    with Daemon(limits={"max_children": 32, "spare_children": 4, "max_per_ip": 8}) as d:
        d.write_mbox("alice", MBOX)
        sup_rss = rss_kb(d.proc.pid)
        held, refused, refusal_times = [], 0, []
        for _ in range(300):
            t = time.monotonic()
            s = socket.create_connection((d.host, d.port), timeout=10,
                                         source_address=("127.0.0.2", 0))
            f = s.makefile("rb")
            line = f.readline()
            if line.startswith(replies.REFUSAL):
                refused += 1
                refusal_times.append(time.monotonic() - t)
                s.close()
            else:
                held.append((s, f))
        assert len(held) == 8 and refused == 292
        latencies = []
        for _ in range(10):
            t = time.monotonic()
            still_serves(d)
            latencies.append(time.monotonic() - t)
        children = [p for p in descendants(d.proc.pid) if title(p).startswith("popd: child")]
        assert len(children) <= 32
        print(f"legit login+STAT+QUIT under attack: max {max(latencies) * 1000:.0f} ms; "
              f"refusal answered in max {max(refusal_times) * 1000:.1f} ms")
        assert max(latencies) < 1.0
        assert max(refusal_times) < 0.5
        assert rss_kb(d.proc.pid) - sup_rss < 2048            # supervisor stays flat
        for s, f in held:
            s.close()


# -- the broker against garbage -----------------------------------------------------

libc = ctypes.CDLL("libc.so.6", use_errno=True)
SYS_pidfd_getfd = 438


def steal_fd(pid, fd):
    """Duplicate a live process's fd into ours (root only): a test's way to
    speak on a front's channel exactly as a compromised front would."""
    pidfd = os.pidfd_open(pid)
    try:
        new = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if new < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return new
    finally:
        os.close(pidfd)


def socket_inodes(pid):
    """{inode: fd} of a process's sockets."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            out[target[8:-1]] = int(fd)
    return out


def channel_between(pid, peer_pid):
    """The fd of `pid`'s socket whose other end `peer_pid` holds (peer
    inodes from ss(8))."""
    mine, theirs = socket_inodes(pid), socket_inodes(peer_pid)
    out = subprocess.run(["ss", "-xa"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        local, peer = fields[-3], fields[-1]
        if local in mine and peer in theirs:
            return mine[local]
    raise AssertionError("no channel between the two processes")


@pytest.mark.parametrize("garbage", [
    b"", b"\x01", b"\x01\x0a\x00\x00", b"\x01\x0a\xff\xff" + b"x" * 100,
    b"\x02\x0a\x00\x00", b"\x01\x63\x00\x00", b"A" * 5000,
    ipc.encode("AUTH_OK"),                      # an answer sent the wrong way
])
def test_broker_survives_garbage_from_a_front(popd, garbage):
    fronts = popd.wait_for_pids("front", 2)
    (broker,) = popd.pids("auth-broker")
    stolen = socket.socket(fileno=steal_fd(fronts[0], channel_between(fronts[0], broker)))
    stolen.send(garbage)
    stolen.close()
    time.sleep(0.3)
    assert popd.pids("auth-broker") == [broker]                 # same process, alive
    if garbage:                       # (an empty datagram reads as a close)
        assert "broker: closing the channels of slot" in popd.log()
    still_serves(popd)


def test_a_child_killed_mid_session_leaves_the_maildrop_and_the_server_intact(popd):
    big = b"From x@y Thu Nov 26 10:00:00 2026\nSubject: big\n\n" + b"y" * 80 + b"\n" * 1
    data = MBOX + big * 2000
    popd.write_mbox("alice", data)
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"USER alice\r\nPASS %s\r\nDELE 1\r\nRETR 3\r\n" % USERS["alice"][0].encode())
    f.readline(), f.readline(), f.readline()
    (child,) = popd.wait_for_pids("child session", 1)
    os.kill(child, 9)
    assert f.read() is not None
    time.sleep(0.5)
    assert (popd.spool / "alice").read_bytes() == data       # nothing deleted, nothing lost
    c = login(popd)
    assert c.stat()[0] == 2002
    c.quit()
