"""The fronts' seccomp filter (popd/unix/seccomp.py), on live fronts and on a
process put through exactly a front's path (the program compiled once by
seccomp.startup_problem as the supervisor does, then in a forked process
process.after_fork, privileges.sandbox_front, privileges.limit_resources,
seccomp.confine_front, as front.run calls them), which then attacks as a
compromised front would."""
import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import socket
import sys
import time

import pytest

from popd import limits
from popd.unix import privileges, process, seccomp
from tests import replies
from tests.clients import MBOX, USERS_TLS, Client, login
from tests.daemon import LOGIN_UID, Daemon, status

# What the supervisor does at startup, before it forks anything.
PROBLEM = seccomp.startup_problem("required")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root"),
    pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM)),
]

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH = 16
FIOSETOWN = 0x8901
# x86_64 numbers (the filter is built for the native architecture).
SYS = {"tgkill": 234, "pidfd_send_signal": 424, "process_vm_readv": 310,
       "io_uring_setup": 425, "bpf": 321, "unshare": 272}


def memory_mib():
    """limits.session_memory for the forked test process: the default, or
    more if pytest already maps more (RLIMIT_AS counts what is mapped)."""
    with open("/proc/self/status") as f:
        kib = next(int(l.split()[1]) for l in f if l.startswith("VmSize:"))
    return max(1024, (kib >> 10) + 256)


def filter_state(pid):
    st = status(pid)
    return st.get("Seccomp"), st.get("Seccomp_filters")


def fronts(d, count, state=("2", "1"), timeout=10):
    """The `count` fronts once each shows `state` (a front just forked
    loads its filter a moment after it takes its title)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = d.wait_for_pids("front", count)
        if all(filter_state(p) == state for p in pids) or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def in_sandboxed_front(d, mode, attack):
    """Fork; the child becomes a front exactly as front.run makes one (with
    login_seccomp `mode`), runs attack() and sends back its JSON result."""
    memory = memory_mib()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            process.after_fork(keep={w})
            privileges.sandbox_front(str(d.base / "empty"), LOGIN_UID, LOGIN_UID)
            privileges.limit_resources(limits.FRONT_FILES, memory)
            result = {"confine": seccomp.confine_front(mode)}
            result.update(attack())
            os.write(w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, data
    return json.loads(data)


def outcome(call):
    """'ok' or the errno name a call failed with."""
    try:
        call()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def raw(name, *args):
    def call():
        if libc.syscall(SYS[name], *args) == -1:
            raise OSError(ctypes.get_errno(), name)
    return call


@pytest.fixture(scope="module")
def popd():
    with Daemon(limits={"max_children": 8, "spare_children": 3}) as d:
        d.write_mbox("alice", MBOX)
        yield d


def test_live_fronts_run_under_the_filter(popd):
    pids = fronts(popd, 3)
    assert {filter_state(p) for p in pids} == {("2", "1")}
    # Only the fronts: the supervisor, the broker and the children are not
    # filtered (they need what fronts must not have).
    others = set(popd.processes()) - set(pids)
    assert {filter_state(p)[0] for p in others} == {"0"}
    assert "seccomp filter for fronts unavailable" not in popd.log()
    client = login(popd)
    assert client.stat()[0] == 2
    client.quit()
    assert "cannot load the seccomp filter" not in popd.log()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers are x86_64's")
def test_a_filtered_front_cannot_attack(popd):
    victims = fronts(popd, 3)
    victim = victims[0]

    def attack():
        a, b = socket.socketpair()             # allowed: the TLS pipe needs it
        result = {
            # Same uid as the victim, yet no signal of any kind reaches it.
            "kill": outcome(lambda: os.kill(victim, signal.SIGKILL)),
            "kill0": outcome(lambda: os.kill(victim, 0)),
            "tgkill": outcome(raw("tgkill", victim, victim, signal.SIGKILL)),
            "pidfd_open": outcome(lambda: os.pidfd_open(victim)),
            "pidfd_send_signal": outcome(raw("pidfd_send_signal", 3, signal.SIGKILL, 0, 0)),
            "ptrace": outcome(lambda: _ptrace(victim)),
            "process_vm_readv": outcome(raw("process_vm_readv", victim, 0, 0, 0, 0, 0)),
            "execve": outcome(lambda: os.execv("/bin/sh", ["sh"])),
            "socket_inet": outcome(lambda: socket.socket(socket.AF_INET)),
            "socket_unix": outcome(lambda: socket.socket(socket.AF_UNIX)),
            "open": outcome(lambda: os.open("/", os.O_RDONLY)),
            "setresuid": outcome(lambda: os.setresuid(0, 0, 0)),
            "setgroups": outcome(lambda: os.setgroups([0])),
            "fork": outcome(os.fork),
            "F_SETOWN": outcome(lambda: fcntl.fcntl(a.fileno(), fcntl.F_SETOWN, victim)),
            "FIOSETOWN": outcome(lambda: fcntl.ioctl(a.fileno(), FIOSETOWN,
                                                     victim.to_bytes(4, sys.byteorder))),
            "mmap_exec": outcome(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ
                                                   | mmap.PROT_EXEC)),
            "unshare": outcome(raw("unshare", 0x10000000)),          # CLONE_NEWUSER
            "io_uring_setup": outcome(raw("io_uring_setup", 8, 0)),
            "bpf": outcome(raw("bpf", 0, 0, 0)),
            # What a front does still works.
            "nonblocking": outcome(lambda: a.setblocking(False)),
            "nodelay_refused_on_unix": outcome(lambda: a.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)),
            "send": outcome(lambda: a.send(b"x")),
            "recv": outcome(lambda: b.recv(1)),
            "mmap": outcome(lambda: mmap.mmap(-1, 1 << 20)),
            "urandom": outcome(lambda: os.urandom(16)),
        }
        a.close()
        b.close()
        return result

    got = in_sandboxed_front(popd, "required", attack)
    assert got.pop("confine") == "loaded"
    works = {"nonblocking", "send", "recv", "mmap", "urandom"}
    assert {k: v for k, v in got.items() if k in works} == dict.fromkeys(works, "ok")
    # TCP_NODELAY is allowed, but a Unix socket has no TCP level.
    assert got.pop("nodelay_refused_on_unix") == errno.errorcode[errno.EOPNOTSUPP]
    refused = {k: v for k, v in got.items() if k not in works}
    assert refused == dict.fromkeys(refused, "EPERM")
    assert os.kill(victim, 0) is None                       # the victim lives
    assert filter_state(victim) == ("2", "1")


def _ptrace(pid):
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == -1:
        raise OSError(ctypes.get_errno(), "ptrace")


def test_without_the_filter_the_same_front_could_signal_its_peers(popd):
    """The control: through the same path with login_seccomp: off, kill()
    to another front succeeds (same uid), which is what the filter closes."""
    victim = fronts(popd, 3)[0]
    got = in_sandboxed_front(popd, "off", lambda: {
        "kill0": outcome(lambda: os.kill(victim, 0)),
        "socket_inet": outcome(lambda: socket.socket(socket.AF_INET).close())})
    assert got == {"confine": "off", "kill0": "ok", "socket_inet": "ok"}


def test_logins_over_cleartext_stls_and_implicit_tls_under_the_filter():
    with Daemon(tls=True, users=USERS_TLS, limits={"login_deadline": 5}) as d:
        d.write_mbox("alice", MBOX)
        assert {filter_state(p) for p in fronts(d, 2)} == {("2", "1")}
        # STLS, a wrong password, then the right one, a RETR and QUIT.
        c = Client.connect(d)
        assert c.line() == replies.GREETING
        c.starttls(d)
        assert c.command(b"USER alice") == b"+OK"
        assert c.command(b"PASS wrong") == replies.AUTH_FAILED
        c.login()
        assert c.command(b"RETR 1").startswith(b"+OK")
        assert b"Hello" in b"\n".join(c.multiline())
        assert c.command(b"QUIT").startswith(b"+OK")
        c.close()
        # Implicit TLS: the front stays as the pipe, still filtered.
        c = Client.implicit(d)
        assert c.line() == replies.GREETING
        c.login()
        assert c.command(b"STAT").startswith(b"+OK 2 ")
        (child,) = d.wait_for_pids("child session", 1)
        (pipe,) = [p for p in d.pids("front") if _parent(p) == child]
        assert filter_state(pipe) == ("2", "1")
        assert c.command(b"QUIT").startswith(b"+OK")
        c.close()
        # A failed handshake and a silent client end as before.
        s = socket.create_connection((d.host, d.tls_port), timeout=10)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            while s.recv(4096):             # perhaps an alert, then the close
                pass
        except ConnectionResetError:        # closed with our bytes unread
            pass
        s.close()
        s = socket.create_connection((d.host, d.port), timeout=10)
        f = s.makefile("rb")
        assert f.readline().rstrip() == replies.GREETING
        started = time.monotonic()
        assert f.readline().rstrip() == replies.LOGIN_TIMEOUT
        assert time.monotonic() - started < 8
        s.close()
        d.wait_for_log("TLS handshake failed")
        assert "cannot load the seccomp filter" not in d.log()
        assert "internal error" not in d.log()
    with Daemon(plaintext="always") as d:
        d.write_mbox("alice", MBOX)
        client = login(d)                               # cleartext: hand-over
        assert client.stat()[0] == 2
        client.quit()
        assert "internal error" not in d.log()


def _parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def test_login_seccomp_off_leaves_fronts_unfiltered():
    with Daemon(extra={"login_seccomp": "off"}) as d:
        assert {filter_state(p) for p in fronts(d, 2, ("0", "0"))} == {("0", "0")}
        assert "seccomp filter for fronts unavailable" not in d.log()


def test_startup_says_when_libseccomp_cannot_be_loaded(tmp_path, monkeypatch):
    """The daemon's own dynamic linker finds no usable libseccomp.so.2:
    LD_LIBRARY_PATH puts an empty file of that name first, and dlopen()
    stops at it ("file too short") as it stops at a missing library.  The
    supervisor takes the same path as on a machine without libseccomp2."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libseccomp.so.2").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))
    start = "seccomp filter for fronts unavailable: cannot load libseccomp.so.2 ("
    fix = "); install libseccomp (Debian: apt-get install libseccomp2)"
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        lines = [l for l in d.log().splitlines() if "seccomp filter for fronts" in l]
        assert len(lines) == 1 and start in lines[0] and lines[0].endswith(fix), d.log()
        assert f"{lib}/libseccomp.so.2" in lines[0]
        line = lines[0][lines[0].index(start):]
        assert {filter_state(p) for p in fronts(d, 2, ("0", "0"))} == {("0", "0")}
        client = login(d)                               # and popd serves without it
        client.quit()
    d = Daemon(extra={"login_seccomp": "required"})
    try:
        # --check-config finds it first, with the same line.
        check = d.check_config()
        assert check.returncode == 1 and line in check.stderr, check.stderr
        d.start(wait=False)
        assert d.proc.wait(timeout=30) != 0
        assert line in d.log(), d.log()
        assert "ready:" not in d.log()
    finally:
        d.__exit__(None, None, None)
