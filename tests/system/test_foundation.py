"""The foundation end to end: the real daemon as root, real poplib clients,
and the privilege story read from /proc of the live processes."""
import os
import poplib
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests import replies
from tests.clients import MBOX, OCTETS, connect_raw, login
from tests.daemon import (
    BROKER_UID,
    LOGIN_UID,
    POPD_UID,
    USERS,
    Daemon,
    caps,
    descendants,
    socket_kinds,
    status,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

SETID_CAPS = "00000000000000c0"
NO_CAPS = "0000000000000000"



@pytest.fixture
def popd():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        yield d


def test_login_stat_retr_quit(popd):
    client = poplib.POP3(popd.host, popd.port, timeout=10)
    assert client.getwelcome() == replies.GREETING
    client.user("alice")
    assert client.pass_(USERS["alice"][0]) == replies.LOGGED_IN
    assert client.stat() == (2, sum(OCTETS))
    _, listing, _ = client.list()
    assert listing == [b"1 %d" % OCTETS[0], b"2 %d" % OCTETS[1]]
    _, lines, _ = client.retr(1)
    assert lines == [b"From: a@example.org", b"Subject: one", b"", b"Hello", b".dot line"]
    assert client.quit().startswith(b"+OK")
    popd.wait_for_log('session end: rip=127.0.0.1, user="alice"')


def test_absent_mailbox_is_empty(popd):
    client = login(popd, "bob")
    assert client.stat() == (0, 0)
    client.quit()


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nosuchuser", "whatever")])
def test_bad_credentials_same_answer(popd, user, password):
    client = poplib.POP3(popd.host, popd.port, timeout=10)
    client.user(user)
    with pytest.raises(poplib.error_proto) as err:
        client.pass_(password)
    assert err.value.args[0] == replies.AUTH_FAILED
    # The connection goes on: a right password now logs in.
    client.user("alice")
    assert client.pass_(USERS["alice"][0]) == replies.LOGGED_IN
    client.quit()
    assert "auth failed: rip=127.0.0.1" in popd.log()


def test_attempts_per_connection_are_capped(popd):
    s, f = connect_raw(popd)
    f.readline()
    answers = []
    for _ in range(3):
        s.sendall(b"USER alice\r\nPASS wrong\r\n")
        f.readline()
        answers.append(f.readline().rstrip())
    assert answers == [replies.AUTH_FAILED, replies.AUTH_FAILED, replies.TOO_MANY_FAILURES]
    assert f.read() == b""                       # and the connection ends


def test_uid_below_first_valid_uid_is_refused(popd):
    popd.write_mbox("lowuid", MBOX, uid=1001)
    client = poplib.POP3(popd.host, popd.port, timeout=10)
    client.user("lowuid")
    with pytest.raises(poplib.error_proto) as err:
        client.pass_(USERS["lowuid"][0])
    assert err.value.args[0].startswith(b"-ERR [SYS/PERM]")
    assert "uid 1001 is below mail.first_valid_uid" in popd.log()


def test_pipelined_commands_after_pass_are_answered(popd):
    s, f = connect_raw(popd)
    assert f.readline().startswith(replies.GREETING)
    s.sendall(b"USER alice\r\nPASS " + USERS["alice"][0].encode() + b"\r\nSTAT\r\nNOOP\r\nQUIT\r\n")
    answers = [f.readline().rstrip(b"\r\n") for _ in range(5)]
    assert answers == [b"+OK", replies.LOGGED_IN, b"+OK 2 %d" % sum(OCTETS), b"+OK",
                       b"+OK Bye, 0 message(s) deleted"]
    s.close()


def test_commands_outside_their_state(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"STAT\r\nPASS x\r\nFOO\r\n")
    assert [f.readline().rstrip() for _ in range(3)] == [
        replies.BAD_STATE, b"-ERR Send USER first", replies.UNKNOWN]
    s.close()


def test_overlong_line_is_drained_and_session_goes_on(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"PASS " + b"a" * 5000 + b"\r\nCAPA\r\n")
    assert f.readline().rstrip() == replies.LINE_TOO_LONG
    assert f.readline().startswith(b"+OK")
    s.close()


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


def test_connection_caps_refuse_with_canned_line():
    with Daemon(limits={"max_children": 4, "spare_children": 2, "max_per_ip": 2}) as d:
        held = []
        for _ in range(2):
            s, f = connect_raw(d, "127.0.0.1")
            assert f.readline().startswith(replies.GREETING)
            held.append(s)
        s, f = connect_raw(d, "127.0.0.1")             # max_per_ip + 1
        assert f.readline().rstrip() == replies.REFUSAL
        assert f.read() == b""
        for _ in range(2):
            s, f = connect_raw(d, "127.0.0.2")
            assert f.readline().startswith(replies.GREETING)
            held.append(s)
        s, f = connect_raw(d, "127.0.0.3")             # max_children + 1
        assert f.readline().rstrip() == replies.REFUSAL
        # Another address is served again as soon as a place frees up.
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            s, f = connect_raw(d, "127.0.0.3")
            line = f.readline()
            if line.startswith(replies.GREETING) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert line.startswith(replies.GREETING)
        assert len(d.pids("child")) <= 4


def test_killed_slot_is_replaced(popd):
    idle = popd.wait_for_pids("child idle", 2)
    os.kill(idle[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = popd.pids("child idle")
        if len(now) == 2 and idle[0] not in now:
            break
        time.sleep(0.05)
    assert len(now) == 2 and idle[0] not in now
    login(popd).quit()


def test_killed_spawner_is_replaced(popd):
    """The supervisor notices at the next fork, starts a new spawner and
    backs off; slots come back and logins work."""
    idle = popd.wait_for_pids("child idle", 2)
    (spawner,) = popd.spawners()
    os.kill(spawner, signal.SIGKILL)
    os.kill(idle[0], signal.SIGKILL)               # so a slot is needed
    popd.wait_for_log("spawner failed")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = popd.spawners()
        if len(now) == 1 and now != [spawner] and len(popd.pids("child idle")) == 2:
            break
        time.sleep(0.05)
    assert len(now) == 1 and now != [spawner]
    assert len(popd.pids("child idle")) == 2
    login(popd).quit()


def test_term_stops_everything(popd):
    client = login(popd)
    client.stat()
    pids = descendants(popd.proc.pid)
    titles = {p: open(f"/proc/{p}/cmdline").read() for p in pids}
    assert pids
    popd.proc.send_signal(signal.SIGTERM)
    client.quit()                                # the session may finish
    assert popd.proc.wait(15) == 0, popd.log()
    time.sleep(0.2)
    alive = [(p, titles[p], open(f"/proc/{p}/stat").read()) for p in pids
             if os.path.exists(f"/proc/{p}") and
             open(f"/proc/{p}/stat").read().split()[2] != "Z"]
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


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"])
def test_popd_passwd_entries_verify_in_the_broker(scheme):
    with Daemon() as d:
        uid = USERS["alice"][1]
        run = subprocess.run(
            [sys.executable, "-m", "popd.passwd_cli", "--scheme", scheme, "--stdin",
             "--uid", str(uid), "--gid", str(uid), "--append", str(d.passwd_file), "carol"],
            input="carol pw ünïcode\n", capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        d.write_mbox("carol", MBOX, uid=uid)
        client = poplib.POP3(d.host, d.port, timeout=10)
        client.user("carol")
        assert client.pass_("carol pw ünïcode") == replies.LOGGED_IN    # sent as UTF-8
        assert client.stat() == (2, sum(OCTETS))
        client.quit()
