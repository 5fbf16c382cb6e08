"""popd.mail.locking (fcntl locks, dot-locks, interop with procmail) and the
lock helper (popd.slot.lock_helper).

Runs as root (uids are switched in forked processes); numeric ids only:
61001 is the mailbox owner, 60010 the pool user, 60200 plays group "mail".
Work directories are made under /tmp and opened up for those ids.
"""

from __future__ import annotations

import array
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from popd.mail import locking, maildrop
from popd.slot import lock_helper
from popd.unix import privileges

OWNER = 61001
POOL = 60010
MAILGID = 60200
PROCMAIL = "/usr/bin/procmail"
LOCKFILE = "/usr/bin/lockfile"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MESSAGE = b"From: a@example.org\nTo: b@example.org\nSubject: interop\n\nhello\n"


# ------------------------------------------------------------------ helpers

@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="popd-lock-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def become(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def start_child(fn, *, go=False):
    """Fork; the child runs fn(go_fd or None) and pickles its result (or the
    repr of its exception) into a pipe.  Returns (pid, result_fd, go_fd)."""
    r, w = os.pipe()
    gr, gw = os.pipe() if go else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if gw is not None:
            os.close(gw)
        try:
            result = fn(gr)
        except BaseException as e:              # noqa: B902
            result = ("exception", repr(e))
        try:
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    if gr is not None:
        os.close(gr)
    return pid, r, gw


def finish_child(pid, r, timeout=30):
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
        assert time.monotonic() < deadline
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pickle.loads(data)


def in_child(fn):
    pid, r, _ = start_child(lambda _go: fn())
    return finish_child(pid, r)


def read_line(fd):
    out = b""
    while not out.endswith(b"\n"):
        c = os.read(fd, 1)
        if not c:
            break
        out += c
    return out.decode()


def make_mbox(directory, uid=OWNER, content=b""):
    path = os.path.join(directory, "mbox")
    with open(path, "wb") as f:
        f.write(content)
    os.chown(path, uid, uid)
    os.chmod(path, 0o600)
    return path


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def dead_pid():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# ------------------------------------------------------------------ 1. fcntl

def test_fcntl_lock_excludes_another_process(workdir):
    mbox = make_mbox(workdir)
    fd = os.open(mbox, os.O_RDWR)
    try:
        locking.fcntl_lock(fd, True, 1.0)

        def try_lock(exclusive, timeout):
            fd2 = os.open(mbox, os.O_RDWR)
            t = time.monotonic()
            try:
                locking.fcntl_lock(fd2, exclusive, timeout)
                return ("got", time.monotonic() - t)
            except locking.LockBusy:
                return ("busy", time.monotonic() - t)

        kind, took = in_child(lambda: try_lock(False, 0.3))
        assert kind == "busy" and 0.3 <= took < 2.0

        # A shared lock admits another shared one, not an exclusive one.
        locking.fcntl_unlock(fd)
        locking.fcntl_lock(fd, False, 1.0)
        assert in_child(lambda: try_lock(False, 0.3))[0] == "got"
        kind, took = in_child(lambda: try_lock(True, 0.2))
        assert kind == "busy" and 0.2 <= took < 2.0

        # A waiter gets it once we let go.
        pid, r, _ = start_child(lambda _go: try_lock(True, 5.0))
        time.sleep(0.5)
        locking.fcntl_unlock(fd)
        kind, took = finish_child(pid, r)
        assert kind == "got" and 0.4 <= took < 3.0
    finally:
        os.close(fd)


def test_fcntl_lock_reports_real_errors(workdir):
    mbox = make_mbox(workdir)
    fd = os.open(mbox, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:       # exclusive needs write access
            locking.fcntl_lock(fd, True, 0.1)
        assert not isinstance(e.value, locking.LockBusy)
    finally:
        os.close(fd)


# --------------------------------------------------------------- 2. dot-lock

def test_dotlock_create_and_release(workdir):
    mbox = make_mbox(workdir)
    lock = locking.DotLock(mbox)
    assert lock.acquire(1.0) is True and lock.held
    st = os.lstat(mbox + ".lock")
    assert stat.S_ISREG(st.st_mode)
    with open(mbox + ".lock", "rb") as f:
        assert f.read() == b"%d\n" % os.getpid()
    age(mbox + ".lock", 60)
    lock.touch()
    assert time.time() - os.lstat(mbox + ".lock").st_mtime < 5
    assert lock.release() is True
    assert not os.path.lexists(mbox + ".lock")
    assert lock.release() is False


def test_dotlock_second_acquirer_waits_then_gets_it(workdir):
    mbox = make_mbox(workdir)
    lock = locking.DotLock(mbox)
    assert lock.acquire(1.0)

    def other(timeout):
        mine = locking.DotLock(mbox)
        t = time.monotonic()
        try:
            got = mine.acquire(timeout)
        except locking.LockBusy:
            return ("busy", time.monotonic() - t)
        took = time.monotonic() - t
        with open(mbox + ".lock", "rb") as f:
            content = f.read()
        mine.release()
        return (got, took, content, os.getpid())

    kind, took = in_child(lambda: other(0.3))
    assert kind == "busy" and 0.3 <= took < 2.0

    pid, r, _ = start_child(lambda _go: other(5.0))
    time.sleep(0.5)
    assert lock.release()
    got, took, content, child_pid = finish_child(pid, r)
    assert got is True and 0.4 <= took < 3.0
    assert content == b"%d\n" % child_pid
    assert not os.path.lexists(mbox + ".lock")


def test_dotlock_breaks_stale_by_age(workdir):
    mbox = make_mbox(workdir)
    path = mbox + ".lock"
    with open(path, "wb") as f:
        f.write(b"0")                          # as procmail writes it
    age(path, 300)
    age(mbox, 300)
    lock = locking.DotLock(mbox, stale_after=120)
    assert lock.acquire(0.5)
    assert "unchanged" in lock.broken
    with open(path, "rb") as f:
        assert f.read() == b"%d\n" % os.getpid()
    lock.release()


def test_dotlock_old_lock_kept_while_mbox_changes(workdir):
    """A slow delivery that is still writing keeps its lock (dovecot rule)."""
    mbox = make_mbox(workdir)
    path = mbox + ".lock"
    open(path, "wb").close()
    age(path, 300)                             # the mbox itself is fresh
    with pytest.raises(locking.LockBusy):
        locking.DotLock(mbox, stale_after=120).acquire(0.3)
    assert os.path.exists(path)


def test_dotlock_breaks_stale_by_dead_pid(workdir):
    mbox = make_mbox(workdir)
    path = mbox + ".lock"
    with open(path, "wb") as f:
        f.write(b"%d\n" % dead_pid())
    lock = locking.DotLock(mbox)
    assert lock.acquire(0.5)
    assert "gone" in lock.broken
    lock.release()


def test_dotlock_live_pid_and_odd_files_are_not_broken(workdir):
    mbox = make_mbox(workdir)
    age(mbox, 300)
    path = mbox + ".lock"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # A live pid: held.  A pid we may not signal (EPERM) counts as alive.
        for content, owner in ((b"%d\n" % sleeper.pid, 0),
                               (b"1\n", 0), (b"0", 0)):
            with open(path, "wb") as f:
                f.write(content)
            with pytest.raises(locking.LockBusy):
                locking.DotLock(mbox).acquire(0.2)
            os.unlink(path)
        pid, r, _ = start_child(lambda _go: (become(OWNER, OWNER),
                                             locking._pid_is_dead(sleeper.pid))[1])
        assert finish_child(pid, r) is False
    finally:
        sleeper.kill()
        sleeper.wait()
    # Old, but not something we may take for a lock: another user's file,
    # a big file, a hard-linked file, a symlink.
    with open(path, "wb") as f:
        f.write(b"%d\n" % dead_pid())
    os.chown(path, OWNER, OWNER)
    age(path, 300)
    with pytest.raises(locking.LockBusy):
        locking.DotLock(mbox).acquire(0.2)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(b"From x\n" + b"a" * 100)
    age(path, 300)
    with pytest.raises(locking.LockBusy):
        locking.DotLock(mbox).acquire(0.2)
    os.unlink(path)
    open(path, "wb").close()
    os.link(path, path + "2")
    age(path, 300)
    with pytest.raises(locking.LockBusy):
        locking.DotLock(mbox).acquire(0.2)
    os.unlink(path)
    os.unlink(path + "2")
    os.symlink("/etc/passwd", path)
    age(path, 300)
    with pytest.raises(locking.LockBusy):
        locking.DotLock(mbox).acquire(0.2)
    assert os.path.islink(path)


def test_dotlock_release_never_removes_a_lock_we_did_not_create(workdir):
    mbox = make_mbox(workdir)
    path = mbox + ".lock"
    # Not held: release touches nothing.
    with open(path, "wb") as f:
        f.write(b"4242\n")
    assert locking.DotLock(mbox).release() is False
    assert os.path.exists(path)
    os.unlink(path)
    # Held, then broken and re-made by someone else: theirs stays.
    lock = locking.DotLock(mbox)
    assert lock.acquire(0.5)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(b"4242\n")
    assert lock.release() is False
    with open(path, "rb") as f:
        assert f.read() == b"4242\n"


def test_dotlock_unavailable_in_unwritable_directory(workdir):
    mbox = make_mbox(workdir)                  # directory root's, 0755

    def as_owner():
        become(OWNER, OWNER)
        lock = locking.DotLock(mbox)
        return lock.acquire(1.0), lock.unavailable

    got, why = in_child(as_owner)
    assert got is False and "may not create" in why
    assert not os.path.lexists(mbox + ".lock")
    # Even when somebody holds it: no waiting for a lock we could never take.
    open(mbox + ".lock", "wb").close()
    t = time.monotonic()
    assert in_child(as_owner)[0] is False
    assert time.monotonic() - t < 0.5


# ------------------------------------------------------- 3. procmail interop

def procmail_env(workdir):
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "SHELL": "/bin/sh"}


def procmail(workdir, rc_text, mbox, *extra):
    """procmail as the owner (setpriv, no groups), in mailfilter mode with
    our rcfile; LOCKSLEEP=1 so it retries a held dot-lock every second
    (default 8)."""
    rc = os.path.join(workdir, "rc")
    with open(rc, "w") as f:
        f.write(rc_text)
    os.chown(rc, OWNER, OWNER)
    os.chmod(rc, 0o644)
    cmd = ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups",
           PROCMAIL, "-m", *extra, f"MBOX={mbox}", "LOCKSLEEP=1", rc]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=procmail_env(workdir),
                         cwd=workdir)
    p.stdin.write(MESSAGE)
    p.stdin.close()
    return p


def wait_for(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


needs_procmail = pytest.mark.skipif(not os.path.exists(PROCMAIL),
                                    reason="procmail not installed")


@pytest.fixture
def ownerdir(workdir):
    os.chown(workdir, OWNER, OWNER)
    return workdir


@needs_procmail
@pytest.mark.parametrize("dotlock", [True, False], ids=["fcntl+dotlock",
                                                         "fcntl-only-shared"])
def test_procmail_waits_while_popd_holds_the_lock(ownerdir, dotlock):
    mbox = make_mbox(ownerdir)
    fd = os.open(mbox, os.O_RDWR)
    lock = locking.DotLock(mbox)
    try:
        if dotlock:                            # the update: both, exclusive
            assert lock.acquire(1.0)
            locking.fcntl_lock(fd, True, 1.0)
        else:                                  # the scan where no dot-lock
            locking.fcntl_lock(fd, False, 1.0)
        p = procmail(ownerdir, ":0:\n$MBOX\n", mbox, "-f", "sender@example.org")
        time.sleep(2.5)
        assert p.poll() is None, "procmail finished while popd held the lock"
        assert os.path.getsize(mbox) == 0
        if not dotlock:                        # it got the dot-lock, waits on fcntl
            assert os.lstat(mbox + ".lock").st_uid == OWNER
        if dotlock:
            lock.release()
        locking.fcntl_unlock(fd)
        assert p.wait(timeout=15) == 0
    finally:
        if p.poll() is None:
            p.kill()
        os.close(fd)
    with open(mbox, "rb") as f:
        data = f.read()
    assert data.startswith(b"From sender@example.org ")
    assert b"Subject: interop\n\nhello\n" in data
    assert not os.path.lexists(mbox + ".lock")


@needs_procmail
def test_popd_waits_while_procmail_holds_the_lock(ownerdir):
    mbox = make_mbox(ownerdir)
    # procmail takes <mbox>.lock for the recipe and holds it while the
    # (slow) delivery runs.
    p = procmail(ownerdir, ':0:$MBOX.lock\n| sleep 3; cat >> "$MBOX"\n', mbox)
    try:
        assert wait_for(lambda: os.path.lexists(mbox + ".lock"), 5)
        t = time.monotonic()
        with pytest.raises(locking.LockBusy):
            locking.DotLock(mbox).acquire(0.5)
        assert 0.5 <= time.monotonic() - t < 2.5
        lock = locking.DotLock(mbox)
        t = time.monotonic()
        assert lock.acquire(15.0)
        assert time.monotonic() - t > 0.5
        with open(mbox, "rb") as f:           # procmail was done when we got it
            assert b"Subject: interop" in f.read()
        assert lock.broken is None
        assert p.wait(timeout=5) == 0
        lock.release()
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.skipif(not os.path.exists(LOCKFILE), reason="lockfile not installed")
def test_lockfile_binary_lock_respected_then_broken_when_stale(ownerdir):
    mbox = make_mbox(ownerdir)
    age(mbox, 600)
    subprocess.run(["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}",
                    "--clear-groups", LOCKFILE, "-r0", mbox + ".lock"],
                   check=True, env=procmail_env(ownerdir))
    st = os.lstat(mbox + ".lock")
    assert st.st_uid == OWNER

    def as_owner():
        become(OWNER, OWNER)
        try:
            locking.DotLock(mbox).acquire(0.3)
        except locking.LockBusy:
            busy = True
        else:
            busy = False
        age(mbox + ".lock", 600)
        lock = locking.DotLock(mbox)
        return busy, lock.acquire(0.3), lock.broken, lock.release()

    assert in_child(as_owner) == (True, True, "unchanged for more than 120 s",
                                  True)


# ------------------------------------------------------------ 4. lock helper

@pytest.fixture
def spool():
    """A /tmp directory like Debian's /var/mail: 2775 root:<mail>."""
    d = tempfile.mkdtemp(prefix="popd-spool-", dir="/tmp")
    os.chown(d, 0, MAILGID)
    os.chmod(d, 0o2775)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_lock_helper_from_the_child(spool):
    mbox = make_mbox(spool)
    lockpath = mbox + ".lock"

    def child(go):
        privileges.drop_to(POOL, POOL, keep=privileges.SETID_CAPS)
        client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
        privileges.become_owner(OWNER, OWNER, 1000, 1000, set(), set())
        me = proc_status("self")
        facts = {"my_gid": me["Gid"], "my_groups": me["Groups"],
                 "my_uid": me["Uid"]}
        try:
            os.open(lockpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            facts["own_create"] = "created!"
        except PermissionError as e:
            facts["own_create"] = e.errno
        mine = locking.DotLock(mbox)
        facts["own_dotlock"] = (mine.acquire(0.2), mine.unavailable)
        for name in ("environ", "mem"):
            try:
                open(f"/proc/{client.pid}/{name}", "rb").read(1)
                facts[name] = "readable!"
            except PermissionError:
                facts[name] = "denied"
        try:
            os.listdir(f"/proc/{client.pid}/fd")
            facts["fd"] = "readable!"
        except PermissionError:
            facts["fd"] = "denied"
        facts["acquire"] = client.acquire(2.0)
        st = os.lstat(lockpath)
        facts["lock_owner"] = (st.st_uid, st.st_gid)
        with open(lockpath, "rb") as f:
            facts["lock_content"] = f.read()
        facts["helper"] = client.pid
        # In decimal: a pickled pid can hold a b"\n" byte (pid 0x..0a).
        os.write(report_w, b"%d\n" % client.pid)
        read_line(go)                           # the test inspects the helper
        facts["release"] = client.release()
        facts["gone"] = not os.path.lexists(lockpath)
        client.close()
        return facts

    report_r, report_w = os.pipe()
    pid, r, go = start_child(child, go=True)
    os.close(report_w)
    line = b""
    while not line.endswith(b"\n"):
        c = os.read(report_r, 1)
        assert c, "child did not report"
        line += c
    os.close(report_r)
    helper = int(line)
    try:
        status = proc_status(helper)
        assert status["Uid"].split() == [str(OWNER)] * 4
        assert status["Gid"].split() == [str(MAILGID)] * 4
        assert status["Groups"] in ("", str(MAILGID))
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[cap], 16) == 0, cap
        assert status["NoNewPrivs"] == "1"
        fds = os.listdir(f"/proc/{helper}/fd")
        targets = {int(n): os.readlink(f"/proc/{helper}/fd/{n}") for n in fds}
        # 0-2 on /dev/null, its socket, and the lock it holds (for futimens).
        assert sorted(targets)[:3] == [0, 1, 2] and len(targets) == 5
        assert all(targets[n] == "/dev/null" for n in (0, 1, 2))
        rest = sorted(t for n, t in targets.items() if n > 2)
        assert rest[0] == lockpath and rest[1].startswith("socket:")
        assert os.lstat(mbox + ".lock").st_uid == OWNER
    finally:
        os.write(go, b"go\n")
        os.close(go)
    facts = finish_child(pid, r)
    assert facts["my_uid"].split() == [str(OWNER)] * 4
    assert facts["my_gid"].split() == [str(OWNER)] * 4
    assert facts["my_groups"] == ""
    assert str(MAILGID) not in facts["my_gid"] + facts["my_groups"]
    assert facts["own_create"] == 13           # EACCES
    assert facts["own_dotlock"][0] is False
    assert facts["environ"] == facts["mem"] == facts["fd"] == "denied"
    assert facts["acquire"] is True
    assert facts["lock_owner"] == (OWNER, MAILGID)
    assert facts["lock_content"] == b"%d\n" % facts["helper"]
    assert facts["release"] is True and facts["gone"] is True
    assert not os.path.lexists(lockpath)


def helper_exit(client):
    _, status = os.waitpid(client.pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_lock_helper_started_by_root(spool):
    mbox = make_mbox(spool)
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    try:
        status = proc_status(client.pid)
        assert status["Uid"].split() == [str(OWNER)] * 4
        assert int(status["CapBnd"], 16) == 0
        assert client.acquire(1.0)
        # Another holder waits, then gets [IN-USE].
        with pytest.raises(locking.LockBusy):
            locking.DotLock(mbox).acquire(0.2)
        assert client.release()
        # A live other holder: the helper waits, then LockBusy.
        other = locking.DotLock(mbox)
        assert other.acquire(0.5)
        t = time.monotonic()
        with pytest.raises(locking.LockBusy):
            client.acquire(0.3)
        assert 0.3 <= time.monotonic() - t < 2.0
        other.release()
        # A stale lock (dead pid) is broken by the helper.
        with open(mbox + ".lock", "wb") as f:
            f.write(b"%d\n" % dead_pid())
        assert client.acquire(1.0) and client.broken
        # EOF while held: the helper removes its lock and exits.
        client._sock.close()
        client._sock = None
        assert helper_exit(client) == 0
        assert not os.path.lexists(mbox + ".lock")
    finally:
        client.close()


@pytest.mark.parametrize("garbage", [b"X", b"LU", b"L" * 20, b"\x00",
                                     "fd"])
def test_lock_helper_ends_on_garbage(spool, garbage):
    mbox = make_mbox(spool)
    before = sorted(os.listdir(spool))
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    try:
        if garbage == "fd":                    # a well-formed L with an fd
            fds = array.array("i", [os.open("/etc/hostname", os.O_RDONLY)])
            client._sock.sendmsg([b"L"], [(socket.SOL_SOCKET,
                                           socket.SCM_RIGHTS, fds)])
            os.close(fds[0])
        else:
            client._sock.send(garbage)
        assert helper_exit(client) == 2
        assert sorted(os.listdir(spool)) == before
    finally:
        client.close()


def test_lock_helper_held_lock_removed_when_killed_or_garbage(spool):
    mbox = make_mbox(spool)
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    try:
        assert client.acquire(1.0)
        client._sock.send(b"?")
        assert helper_exit(client) == 2
        assert not os.path.lexists(mbox + ".lock")
    finally:
        client.close()
    # SIGKILL leaves the lock behind with a dead pid: the next taker breaks it.
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    try:
        assert client.acquire(1.0)
        os.kill(client.pid, signal.SIGKILL)
        helper_exit(client)
        assert os.path.lexists(mbox + ".lock")
        with pytest.raises(locking.LockHelperError):
            client.release()
        with pytest.raises(locking.LockHelperError):
            client.acquire(0.5)
        # Root does not break a lock of the owner's (not root's, not its own)...
        with pytest.raises(locking.LockBusy):
            locking.DotLock(mbox).acquire(0.2)
    finally:
        client.close()
    # ...the owner's next helper does.
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    try:
        assert client.acquire(0.5) and client.broken
        assert client.release()
        assert not os.path.lexists(mbox + ".lock")
    finally:
        client.close()


def test_lock_helper_refuses_a_directory_the_owner_controls(workdir):
    os.chown(workdir, OWNER, MAILGID)
    os.chmod(workdir, 0o2775)
    mbox = make_mbox(workdir)
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    assert client.pid is None
    assert client.acquire(1.0) is False
    assert "owned by uid" in client.unavailable
    client.close()
    # And a spool the helper's group cannot write into is refused as well.
    os.chown(workdir, 0, 0)
    client = lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
    assert client.pid is None and "not writable by group" in client.unavailable


def test_lock_helper_that_cannot_drop_is_an_error(spool):
    mbox = make_mbox(spool)

    def without_setid_caps():
        become(OWNER, OWNER)                   # no capabilities left
        try:
            lock_helper.start_lock_helper(mbox, OWNER, MAILGID)
        except locking.LockHelperError as e:
            return "error", str(e)
        return "started", None

    kind, text = in_child(without_setid_caps)
    assert kind == "error" and "did not start" in text
    assert sorted(os.listdir(spool)) == ["mbox"]


def test_opening_waits_for_a_writer_that_holds_only_the_dot_lock(tmp_path):
    """A delivery that dot-locks and does not fcntl-lock is half-way through
    a message when a session opens the maildrop: the open waits for the
    dot-lock, so it indexes the whole message, never half of it (a client
    would fetch the half and, by its UIDL, never the rest)."""
    head = b"From a@example.org Thu Nov 26 10:00:00 2026\nSubject: 1\n\nbody\n\n"
    box = tmp_path / "mbox"
    box.write_bytes(head + b"From late@example.org Thu Nov 26 10:00:01 2026\n"
                    b"Subject: late\n\nfirst half\n")
    (tmp_path / "mbox.lock").write_bytes(b"%d\n" % os.getpid())
    (tmp_path / "state" / str(os.getuid())).mkdir(parents=True)

    def finish_delivery():
        time.sleep(0.5)
        with open(box, "ab") as f:
            f.write(b"second half\n\n")
        os.unlink(tmp_path / "mbox.lock")

    writer = threading.Thread(target=finish_delivery)
    writer.start()
    drop = maildrop.Maildrop(str(box), os.getuid(), str(tmp_path / "state")).open()
    writer.join()
    try:
        assert len(drop.index) == 2 and drop.index.size == box.stat().st_size
        assert not (tmp_path / "mbox.lock").exists()      # ours is gone too
    finally:
        drop.close()
