"""The forbidden things, tried by processes put through exactly the code
path the daemon's roles take (privileges.py), and the supervisor's limits
on fronts that stop policing themselves."""
import ctypes
import os
import signal
import time

import pytest

from popd.unix import privileges
from tests import replies
from tests.clients import MBOX, connect_raw, login
from tests.daemon import (
    BROKER_UID,
    LOGIN_UID,
    POPD_UID,
    USERS,
    Daemon,
    descendants,
    in_child,
    title,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

PTRACE_ATTACH = 16
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def ptrace_refused(pid):
    return libc.ptrace(PTRACE_ATTACH, pid, None, None) == -1 and ctypes.get_errno() == 1


@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


def test_a_sandboxed_front_cannot_reach_what_it_must_not(popd):
    (broker,) = popd.pids("auth-broker")
    child = popd.wait_for_pids("child idle", 2)[0]

    def attack():
        privileges.sandbox_front(str(popd.base / "empty"), LOGIN_UID, LOGIN_UID)
        failures = 0
        for path in (str(popd.passwd_file), str(popd.spool / "alice"), "/etc/shadow"):
            try:
                open(path, "rb")
                failures |= 1
            except OSError:
                pass
        if os.listdir("/"):
            failures |= 2                          # the chroot is empty
        for pid in (broker, child, popd.proc.pid):
            if not ptrace_refused(pid):
                failures |= 4
        for target in (0, POPD_UID, BROKER_UID):
            try:
                os.setresuid(target, target, target)
                failures |= 8
            except PermissionError:
                pass
        try:
            os.setgroups([0])
            failures |= 16
        except PermissionError:
            pass
        try:
            os.kill(popd.proc.pid, signal.SIGHUP)
            failures |= 32
        except PermissionError:
            pass
        return failures
    assert in_child(attack) == 0


def test_a_logged_in_child_cannot_get_root_back(popd):
    uid = USERS["alice"][1]

    def attack():
        privileges.drop_to(POPD_UID, POPD_UID, keep=privileges.SETID_CAPS)
        privileges.become_owner(uid, uid, 61000, 61000, {POPD_UID, LOGIN_UID, BROKER_UID},
                                {POPD_UID, LOGIN_UID, BROKER_UID})
        failures = 0
        for ids in ((0, 0, 0), (POPD_UID,) * 3, (61002,) * 3):
            try:
                os.setresuid(*ids)
                failures |= 1
            except PermissionError:
                pass
        try:
            os.setgroups([0])
            failures |= 2
        except PermissionError:
            pass
        try:
            open(str(popd.passwd_file), "rb")
            failures |= 4
        except PermissionError:
            pass
        if privileges.capget() != (0, 0, 0):
            failures |= 8
        return failures
    assert in_child(attack) == 0


def test_grant_targets_are_refused_in_the_child_too():
    def attack():
        privileges.drop_to(POPD_UID, POPD_UID, keep=privileges.SETID_CAPS)
        refused = 0
        for uid, gid in ((0, 61001), (61001, 0), (1001, 61001), (61001, 1001),
                         (BROKER_UID + 2000, BROKER_UID)):
            try:
                privileges.become_owner(uid, gid, 61000, 61000, {BROKER_UID}, {BROKER_UID})
            except privileges.PrivilegeError:
                refused += 1
        return 0 if refused == 5 else 1
    assert in_child(attack) == 0


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


def test_crash_loop_backs_off():
    with Daemon() as d:
        d.wait_for_pids("child idle", 2)
        # Without its chroot every new front dies at once: a crash loop.
        os.rmdir(d.base / "empty")
        d.base.joinpath("empty").write_text("not a directory")
        for pid in d.pids("child idle"):
            os.kill(pid, signal.SIGKILL)
        time.sleep(4)
        crashes = [line for line in d.log().splitlines() if "exited before serving" in line]
        # 0.1 s doubling: about 6 in 4 s; without back-off there would be hundreds.
        assert 3 <= len(crashes) < 15, d.log()
        assert "next spawn in 1.6 s" in d.log()
        assert d.proc.poll() is None


def test_verbose_proctitle():
    with Daemon(extra={"logging": {"target": "stderr", "level": "info",
                                   "verbose_proctitle": True}}) as d:
        d.write_mbox("alice", MBOX)
        client = login(d)
        (child,) = d.wait_for_pids("child session", 1)
        assert title(child) == "popd: child session alice [127.0.0.1]"
        client.quit()
    with Daemon() as d:
        client = login(d, "bob")
        (child,) = d.wait_for_pids("child session", 1)
        assert title(child) == "popd: child session"
        client.quit()


