"""Threat "timeouts turned into DoS" (DESIGN.md, Threats): answered by a
total pre-login deadline, TLS included; proved by "a trickling client is
dropped on time".  Activity does not extend the deadline; the supervisor
kills a front that stopped policing its own; after login an idle client is
dropped at idle_timeout, and a session child that makes no progress at all
is killed by the supervisor after the idle bound."""
import ctypes
import os
import signal
import time

import pytest

from popd import limits
from tests import replies
from tests.clients import MBOX, connect_raw, login, login_from, served
from tests.daemon import Daemon, descendants, gone, status, title

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


# -- before login: the login deadline --------------------------------------------

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


def test_silent_client_is_dropped_at_the_login_deadline():
    with Daemon(limits={"login_deadline": 5}) as d:
        s, f = connect_raw(d)
        assert f.readline().startswith(replies.GREETING)
        started = time.monotonic()
        s.sendall(b"CAPA\r\n")                      # activity does not extend it
        assert f.readline().startswith(b"+OK")
        while f.readline() != b".\r\n":
            pass
        assert f.readline().rstrip() == b"-ERR Login timed out"
        assert f.read() == b""
        assert 3.5 < time.monotonic() - started + 0.5 < 7


def test_supervisor_kills_a_front_that_ignores_its_deadline():
    with Daemon(limits={"login_deadline": 5}) as d:
        s, f = connect_raw(d)
        assert f.readline().startswith(replies.GREETING)
        (busy,) = d.wait_for_pids("child busy", 1)
        (front,) = [p for p in descendants(busy) if title(p).startswith("popd: front")]
        os.kill(front, signal.SIGSTOP)              # a front that stopped policing itself
        started = time.monotonic()
        s.settimeout(20)
        assert f.read() == b""                       # closed by the supervisor's kill
        assert time.monotonic() - started < 12
        # Killed by the supervisor's backstop, or its child gave up at the
        # same deadline (then the supervisor kills the front at once).
        assert ("login deadline passed" in d.log()
                or "no grant before the login deadline" in d.log())
        login(d).quit()                              # and the server goes on


# -- after login: idle and stalled sessions ----------------------------------------

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


PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207


def freeze_with_ptrace(pid):
    """Hold `pid` in a ptrace stop (state t, not T): a session that stops
    making progress without being SIGSTOPped, as a hung one would."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):
        if libc.ptrace(request, pid, None, None) != 0:
            pytest.skip(f"ptrace not allowed here: {os.strerror(ctypes.get_errno())}")
    os.waitpid(pid, WALL)                  # the tracee has entered the stop


WALL = 0x40000000                          # waitpid's __WALL: tracees too


def test_a_session_that_makes_no_progress_is_killed_after_the_idle_bound():
    """The other half of the supervisor's bound: a child that is not
    stopped but does nothing (here held in a ptrace stop by this test) is
    killed once its context switches have not moved for idle_timeout plus
    SESSION_STALL_GRACE; the maildrop is free again and others are served."""
    idle = 10
    with Daemon(limits={"idle_timeout": idle}) as d:
        d.write_mbox("alice", b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\nhi\n")
        c = login_from(d, "alice", "127.0.0.10")
        (child,) = d.wait_for_pids("child session", 1)
        freeze_with_ptrace(child)
        frozen_at = time.monotonic()
        assert status(child)["State"].startswith("t")
        served(d, "bob")
        bound = idle + limits.SESSION_STALL_GRACE + 2 * limits.SESSION_WATCH_INTERVAL + 2
        while time.monotonic() - frozen_at < bound + 5:
            # A tracer must collect its tracee's death before anyone else can.
            if os.waitpid(child, os.WNOHANG | WALL)[0] == child:
                break
            time.sleep(0.1)
        back = time.monotonic() - frozen_at
        assert gone(child), "the frozen session still holds its slot"
        print(f"frozen session's slot came back after {back:.1f} s (bound {bound:.0f} s)")
        assert back <= bound
        d.wait_for_log("reason=killed", timeout=5)
        assert 'user="alice" (rip=127.0.0.10) no progress for' in d.log()
        c.sock.close()
        c = login_from(d, "alice", "127.0.0.30")
        assert c.stat()[0] == 1
        c.quit()
