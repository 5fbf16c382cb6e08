"""Daemon mode (popd without -f), the pid file and systemd's notify socket.

The launcher exits 0 only once the detached supervisor is ready, and 1 with
the reason when anything fails after the fork; the pid file holds the
supervisor's pid and is locked for its lifetime (a second popd refuses, a
stale file is replaced), and no process but the supervisor holds it open.
"""
import atexit
import os
import poplib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from popd.supervisor import daemonize
from tests import replies
from tests.daemon import REPO, USERS, Daemon, descendants, status, title

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


def stat_fields(pid):
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, tty_nr, ...]."""
    return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()


def alive(pid):
    try:
        return stat_fields(pid)[0] != b"Z"
    except OSError:
        return False


def wait_gone(pid, timeout=20.0):
    """Gone, or a zombie: a detached process is reaped by pid 1, in its time."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.05)


def holders(path, pids):
    """The pids among `pids` that have `path` open."""
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if str(path) in links:
            found.add(pid)
    return found


def login(d, user="alice"):
    client = poplib.POP3("127.0.0.1", d.port, timeout=10)
    assert client.getwelcome() == replies.GREETING
    client.user(user)
    assert client.pass_(USERS[user][0]) == replies.LOGGED_IN
    return client


def foreground(d, **kw):
    return subprocess.run([sys.executable, "-m", "popd", "-c", str(d.config), "-f"],
                          stdin=subprocess.DEVNULL, cwd=REPO, timeout=60, **kw)


@pytest.fixture
def daemon():
    d = Daemon()
    d.write_mbox("alice", b"")
    yield d
    if d.proc is not None:
        d.__exit__()
    shutil.rmtree(d.base, ignore_errors=True)


# -- starting detached -------------------------------------------------------------

def test_detached_start_is_ready_when_the_launcher_exits(daemon):
    d = daemon.start(foreground=False)
    # The launcher has exited 0, and only after the supervisor said "ready".
    assert d.launcher.returncode == 0
    assert "ready:" in d.log()
    pid = d.proc.pid
    assert d.pidfile.read_text() == f"{pid}\n"
    assert os.stat(d.pidfile).st_mode & 0o777 == 0o644
    assert title(pid).startswith("popd: supervisor")

    # Detached: not our descendant, a session of its own without a
    # terminal, working in /, stdin and stdout on /dev/null, no stray fds
    # from python-daemon, and a umask of 022 or stricter.
    fields = stat_fields(pid)
    assert pid not in descendants(os.getpid())
    assert int(fields[3]) != os.getsid(0) and int(fields[4]) == 0
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1)] == ["/dev/null"] * 2
    links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert links.count("/dev/null") == 2 and links.count(str(d.pidfile)) == 1
    assert int(status(pid)["Umask"], 8) & 0o022 == 0o022

    client = login(d)
    assert client.stat()[0] == 0
    # Only the supervisor holds the pid file: not the broker and its
    # workers, not a slot's child or front, not the logged-in session.
    everyone = descendants(pid) | {pid}
    assert len(everyone) >= 6, d.processes()
    assert holders(d.pidfile, everyone) == {pid}
    client.quit()


def test_term_stops_the_daemon_and_removes_the_pidfile(daemon):
    d = daemon.start(foreground=False)
    pid = d.proc.pid
    login(d).quit()
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert "stopped" in d.log()
    assert not d.pidfile.exists()
    # And it starts again from there.
    d.log_fh.close()
    d.start(foreground=False)
    login(d).quit()


def test_a_second_popd_says_already_running_and_leaves_the_first_alone(daemon):
    d = daemon.start(foreground=False)
    pid = d.proc.pid
    for second in (d.launch(capture_output=True, text=True),
                   foreground(d, capture_output=True, text=True)):
        assert second.returncode == 1, second.stderr
        assert f"popd: already running (pid {pid}, {d.pidfile})" in second.stderr.splitlines()
    assert d.pidfile.read_text() == f"{pid}\n"
    assert d.proc.poll() is None
    login(d).quit()


def test_a_stale_pidfile_is_replaced(daemon):
    d = daemon.start(foreground=False)
    old = d.proc.pid
    # The supervisor first: killed children first, it would notice its
    # broker's death and stop cleanly, removing the file.
    children = descendants(old)
    os.kill(old, signal.SIGKILL)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(old)
    assert d.pidfile.read_text() == f"{old}\n"       # left behind; its lock is gone
    d.log_fh.close()
    d.start(foreground=False)
    new = d.proc.pid
    assert new != old and d.pidfile.read_text() == f"{new}\n"
    login(d).quit()

    # Only the lock counts, not the number: a pid file naming a live
    # process (this one) is stale too, in either mode.
    d.stop()
    d.pidfile.write_text(f"{os.getpid()}\n")
    d.log_fh.close()
    readies = d.log().count("ready:")
    d.start(wait=False)
    d.wait_for_log("ready:", timeout=30, count=readies + 1)
    assert d.pidfile.read_text() == f"{d.proc.pid}\n"
    login(d).quit()
    assert d.stop() == 0
    assert not d.pidfile.exists()


def test_pidfile_in_a_directory_others_can_write_is_refused(daemon):
    d = daemon
    loose = d.base / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    text = d.config.read_text().replace(str(d.pidfile), str(loose / "popd.pid"))
    d.config.write_text(text)
    run = foreground(d, capture_output=True, text=True)
    assert run.returncode == 1
    assert f"popd: pidfile: {loose} (owner 0, mode 0777) is writable by group or others; " \
        f"run: chmod 0755 {loose}" in run.stderr.splitlines()
    # A symbolic link is not followed.
    d.config.write_text(text.replace(str(loose / "popd.pid"), str(d.pidfile)))
    d.pidfile.symlink_to(d.base / "elsewhere")
    run = foreground(d, capture_output=True, text=True)
    assert run.returncode == 1
    assert f"popd: {d.pidfile} is a symbolic link; remove it" in run.stderr.splitlines()
    assert not (d.base / "elsewhere").exists()


# -- failures after the fork reach the launcher ----------------------------------------

def test_bind_failure_after_detaching_is_reported_by_the_launcher(daemon):
    d = daemon
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", d.port))
        taken.listen()
        run = d.launch(capture_output=True, text=True)
    assert run.returncode == 1
    assert f"popd: cannot listen on 127.0.0.1:{d.port}: Address already in use" \
        in run.stderr.splitlines()
    assert "Traceback" not in run.stderr
    assert not d.pidfile.exists()
    # run() read the launcher's stderr to EOF: every process of the daemon
    # kept that stderr (logging.target: stderr), so all of them have ended.


def test_tls_key_problem_after_the_broker_started_is_reported_by_the_launcher():
    d = Daemon(tls=True)
    try:
        key = d.base / "key.pem"
        key.write_text("not a key\n")          # passes the file checks, fails to load
        run = d.launch(capture_output=True, text=True)
        assert run.returncode == 1
        assert any(line.startswith("popd: tls.key: ") and str(key) in line
                   for line in run.stderr.splitlines()), run.stderr
        assert not d.pidfile.exists()
        # As above: the broker it had started, which held the same stderr,
        # is gone too, or run() would still be reading.
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


def other_key(d):
    """A key that is a valid PEM key but not the certificate's."""
    other = d.ca.issue_cert("localhost")
    other.private_key_pem.write_to_path(str(d.base / "key.pem"))


UNSAFE_FILES = [
    (lambda d: os.chown(d.base / "key.pem", 60001, 60001), "(tls.key) is not owned by root"),
    (lambda d: os.chmod(d.base / "key.pem", 0o644), "(tls.key) is readable by others"),
    (lambda d: os.chmod(d.base / "cert.pem", 0o666), "(tls.cert) is writable by group or others"),
    (lambda d: (d.base / "key.pem").unlink(), "(tls.key): No such file"),
    (lambda d: (d.base / "cert.pem").unlink(), "(tls.cert): No such file"),
    (other_key, "does not match the certificate"),
    (lambda d: os.chmod(d.config, 0o664), "(the configuration) is writable by group"),
    (lambda d: d.passwd_file.unlink(), "(the passwd file): No such file"),
]


@pytest.mark.parametrize("mode, said", [(0o775, "is writable by group 60001; run: chmod g-w"),
                                         (0o777, "is writable by everyone; run: chmod o-w")])
def test_a_directory_others_can_write_on_the_way_to_a_trusted_file_is_refused(mode, said):
    """popd(8), START-UP CHECKS: whoever can write a directory on the way to
    the configuration, the passwd file or the TLS key can swap them; a
    group other than root's counts as well as everyone."""
    d = Daemon(tls=True)
    try:
        os.chown(d.base, 0, 60001)
        os.chmod(d.base, mode)
        check = d.check_config()
        assert check.returncode == 1
        for trusted in (d.config, d.passwd_file, d.base / "key.pem"):
            line = (f"popd: {d.base} (owner 0, mode {mode:04o}) (on the way to {trusted}) "
                    f"{said} {d.base}")
            assert line in check.stderr.splitlines(), check.stderr
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


@pytest.mark.parametrize("fix, said", UNSAFE_FILES)
def test_unsafe_files_are_refused_by_check_config_and_at_start(fix, said):
    """Issue 11: --check-config refuses what a start refuses (a key owned
    by another user or readable by others, a certificate others can write,
    missing files, a mismatched key, a group-writable config), with the
    same one line, and creates nothing while it checks."""
    d = Daemon(tls=True)
    try:
        check = d.check_config()
        assert check.returncode == 0, check.stderr
        assert check.stdout == f"popd: {d.config}: configuration is valid\n"
        assert not (d.base / "state").exists() and not (d.base / "empty").exists()
        fix(d)
        check = d.check_config()
        assert check.returncode == 1 and check.stdout == ""
        lines = check.stderr.splitlines()
        assert len(lines) == 1 and said in lines[0] and lines[0].startswith("popd: "), lines
        run = d.launch(capture_output=True, text=True)
        assert run.returncode == 1
        assert lines[0] in run.stderr.splitlines(), run.stderr
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


# -- the launcher's side of the status pipe, in this process ------------------------------

@pytest.mark.parametrize("body, code, said", [
    (lambda report: (report.ready(), 0)[1], 0, ""),
    (lambda report: (report.failed(["cannot do it", "nor that"]), 1)[1], 1,
     "popd: cannot do it\npopd: nor that\n"),
    (lambda report: 0, 1, daemonize.EXITED_SILENTLY + "\n"),
    (lambda report: os._exit(0), 1, daemonize.EXITED_SILENTLY + "\n"),
    (lambda report: 1 / 0, 1,
     "popd: internal error during start-up: ZeroDivisionError: division by zero\n"),
])
def test_launcher_exit_code_follows_the_daemons_word(tmp_path, capfd, body, code, said):
    """The daemon side runs in a fork of this test process: it must leave
    with os._exit, never through this process's atexit handlers."""
    marker = tmp_path / "atexit-ran"

    def handler():
        marker.write_text(str(os.getpid()))
    atexit.register(handler)
    try:
        capfd.readouterr()
        assert daemonize.launch(False, body) == code
        assert capfd.readouterr().err == said
        time.sleep(0.2)
        assert not marker.exists()
    finally:
        atexit.unregister(handler)


# -- systemd ---------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [False, True])
def test_foreground_tells_systemd_ready_and_stopping(monkeypatch, abstract):
    d = Daemon()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        if abstract:
            name = f"popd-test-{os.getpid()}-{time.monotonic_ns()}"
            notify.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            notify.bind(str(d.base / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(d.base / "notify"))
        notify.settimeout(30)
        with d:
            monkeypatch.delenv("NOTIFY_SOCKET")
            assert notify.recv(4096).split(b"\n")[0] == b"READY=1"
            assert "ready:" in d.log()
            d.proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert d.proc.wait(20) == 0


def test_ctrl_c_in_the_foreground_stops_in_order():
    """Ctrl-C on `popd -f` signals the terminal's whole process group.
    Only the supervisor acts on it: no process dies of SIGINT on its own
    (a session mid-update), a live session gets the shutdown grace and
    its `session end` line, and the supervisor exits 0 without a
    traceback.  Found with the demo: the broker died of SIGINT first and
    the supervisor then tripped over its closed channel."""
    d = Daemon(limits={"shutdown_grace": 2})
    d.write_mbox("alice", b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\nhi\n")
    with d:
        c = poplib.POP3(d.host, d.port, timeout=30)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        assert c.stat()[0] == 1
        os.killpg(d.proc.pid, signal.SIGINT)    # popd -f leads its own group here
        assert d.proc.wait(30) == 0
        log = d.log()
        assert "died of signal 2" not in log and "Traceback" not in log, log
        assert 'session end: rip=127.0.0.1, user="alice"' in log
        c.close()
