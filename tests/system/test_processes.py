"""Threat "running as LocalSystem" (DESIGN.md, Threats): answered by root
only in the supervisor, the front and the broker without capabilities;
proved by /proc checks.  The process table and fd lists of every role,
read from /proc of the live processes; the forbidden things, tried by
processes put through exactly the code path the daemon's roles take
(privileges.py); the broker against garbage from a front's channel, as a
compromised front would send it; and TERM ending every process."""
import ctypes
import os
import poplib
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

from popd import ipc
from popd.unix import privileges
from tests.clients import MBOX, OCTETS, login, login_from, still_serves
from tests.daemon import (
    BROKER_UID,
    LOGIN_UID,
    POPD_UID,
    USERS,
    Daemon,
    caps,
    descendants,
    gone,
    in_child,
    socket_kinds,
    status,
    title,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

SETID_CAPS = "00000000000000c0"
NO_CAPS = "0000000000000000"

PTRACE_ATTACH = 16
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def ptrace_refused(pid):
    return libc.ptrace(PTRACE_ATTACH, pid, None, None) == -1 and ctypes.get_errno() == 1


@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


# -- the process model, read from /proc ------------------------------------------

def test_process_table_before_login(popd):
    popd.wait_for_pids("child idle", 2)
    sup = popd.proc.pid
    st = status(sup)
    assert st["Uid"].split()[0] == "0"

    (broker,) = popd.pids("auth-broker")
    workers = popd.pids("auth-worker")
    assert len(workers) == 2
    for pid in [broker] + workers:
        st = status(pid)
        assert st["Uid"].split() == [str(BROKER_UID)] * 4
        assert st["Gid"].split() == [str(BROKER_UID)] * 4
        assert st["Groups"] == ""
        assert caps(st) == (NO_CAPS, NO_CAPS, NO_CAPS)
        assert st["NoNewPrivs"] == "1"

    # The spawner: root like the supervisor (its children chroot and
    # drop), the parent of every slot's child.
    (spawner,) = popd.spawners()
    assert status(spawner)["Uid"].split()[0] == "0"
    assert status(spawner)["PPid"] == str(sup)

    for child in popd.pids("child idle"):
        st = status(child)
        assert st["PPid"] == str(spawner)
        assert st["Uid"].split() == [str(POPD_UID)] * 4
        assert st["Groups"] == ""
        assert caps(st) == (SETID_CAPS, NO_CAPS, SETID_CAPS)
        assert st["NoNewPrivs"] == "1"
        assert os.stat(f"/proc/{child}/status").st_uid == 0      # not dumpable
        assert os.readlink(f"/proc/{child}/root") == "/"

    fronts = popd.wait_for_pids("front", 2)
    for front in fronts:
        st = status(front)
        assert st["Uid"].split() == [str(LOGIN_UID)] * 4
        assert st["Groups"] == ""
        assert caps(st) == (NO_CAPS, NO_CAPS, NO_CAPS)
        assert st["NoNewPrivs"] == "1"
        assert os.stat(f"/proc/{front}/status").st_uid == 0
        assert os.readlink(f"/proc/{front}/root") == str(popd.base / "empty")


def test_fd_lists_of_every_role(popd):
    popd.wait_for_pids("child idle", 2)
    fronts = popd.wait_for_pids("front", 2)
    # Supervisor: the listener, its wakeup pipe, channels.
    assert socket_kinds(popd.proc.pid).get("listen") == 1
    (broker,) = popd.pids("auth-broker")
    # Broker: the supervisor channel, two per slot, one per hashing worker.
    kinds = socket_kinds(broker)
    assert kinds.pop("unix") == 1 + 2 * 2 + 2
    assert set(kinds) <= {"/dev/null", "eventpoll", str(popd.logfile)}, kinds
    # Spawner: its channel to the supervisor; no listener, no slot's channel.
    (spawner,) = popd.spawners()
    kinds = socket_kinds(spawner)
    assert kinds.pop("unix") == 1
    assert set(kinds) <= {"/dev/null", str(popd.logfile)}, kinds
    for worker in popd.pids("auth-worker"):
        kinds = socket_kinds(worker)
        assert kinds.pop("unix") == 1          # its broker, nothing else
        assert set(kinds) <= {"/dev/null", str(popd.logfile)}, kinds
    for child in popd.pids("child idle"):
        kinds = socket_kinds(child)
        assert kinds.pop("unix") == 3          # supervisor, broker, front
        assert set(kinds) <= {"/dev/null", str(popd.logfile)}, kinds
    for front in fronts:
        kinds = socket_kinds(front)
        assert kinds.pop("unix") == 2          # broker, child
        assert kinds == {"/dev/null": 3}, kinds


def test_logged_in_child(popd):
    client = login(popd)
    client.stat()
    (child,) = popd.wait_for_pids("child session", 1)
    st = status(child)
    uid = USERS["alice"][1]
    assert st["Uid"].split() == [str(uid)] * 4
    assert st["Gid"].split() == [str(uid)] * 4
    assert st["Groups"] == ""
    assert caps(st)[:2] == (NO_CAPS, NO_CAPS)
    assert st["NoNewPrivs"] == "1"
    assert os.stat(f"/proc/{child}/status").st_uid == 0
    kinds = socket_kinds(child)
    assert kinds.get("tcp") == 1 and "listen" not in kinds and "pipe" not in kinds
    assert kinds.get("unix") == 1              # only the supervisor channel
    # The state directory was made for the uid.
    st_dir = os.stat(popd.base / "state" / str(uid))
    assert (st_dir.st_uid, stat.S_IMODE(st_dir.st_mode)) == (uid, 0o700)
    assert stat.S_IMODE(os.stat(popd.base / "state").st_mode) == 0o711
    client.quit()


def test_owner_signalling_its_child_does_not_reach_the_supervisor(popd):
    client = login(popd)
    (child,) = popd.wait_for_pids("child session", 1)
    uid = USERS["alice"][1]
    pid = os.fork()
    if pid == 0:                                # as the mailbox owner
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(child, signal.SIGHUP)
            os.kill(child, signal.SIGTERM)
            try:
                os.kill(popd.proc.pid, signal.SIGTERM)
                os._exit(3)                     # must not be allowed
            except PermissionError:
                os._exit(0)
        finally:
            os._exit(4)
    assert os.waitpid(pid, 0)[1] == 0
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.stat()
    time.sleep(0.5)
    assert popd.proc.poll() is None
    assert "stopping" not in popd.log() and "SIGHUP" not in popd.log()
    other = login(popd)                          # still serving
    assert other.stat() == (2, sum(OCTETS))
    other.quit()


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


# -- the forbidden things ------------------------------------------------------------

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


# -- the broker against garbage -----------------------------------------------------

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


# -- TERM ---------------------------------------------------------------------------

def test_term_stops_everything(popd):
    client = login(popd)
    client.stat()
    pids = descendants(popd.proc.pid)
    titles = {p: title(p) for p in pids}          # "" for one already gone
    assert pids
    popd.proc.send_signal(signal.SIGTERM)
    client.quit()                                # the session may finish
    assert popd.proc.wait(15) == 0, popd.log()
    time.sleep(0.2)
    alive = [(p, titles[p]) for p in pids if not gone(p)]
    assert alive == [], repr(alive)


def test_term_kills_sessions_after_the_grace():
    with Daemon(limits={"shutdown_grace": 1}) as d:
        client = login(d, "bob")
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0
        assert time.monotonic() - start < 5
        with pytest.raises((poplib.error_proto, OSError, EOFError)):
            client.stat()


def test_sessions_killed_at_the_shutdown_grace_end_with_a_line():
    with Daemon(limits={"shutdown_grace": 1}) as d:
        c = login_from(d, "alice")
        c.stat()
        d.stop()
        assert re.search(r'session end: rip=127\.0\.0\.1, user="alice", '
                         r'duration=[\d.]+, reason=killed', d.log()), d.log()
        c.close()
