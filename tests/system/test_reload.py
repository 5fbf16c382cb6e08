"""SIGHUP reload and the start-up checks on trusted files."""
import errno
import os
import poplib
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import replies
from tests.clients import MBOX, connect_raw, login
from tests.daemon import REPO, USERS, Daemon, gone, in_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


def capa(d):
    s, f = connect_raw(d)
    f.readline()
    s.sendall(b"CAPA\r\n")
    lines = []
    while (line := f.readline()) != b".\r\n":
        lines.append(line.rstrip())
    s.close()
    return lines


def hup(d, expect):
    count = d.log().count(expect)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log(expect, count=count + 1)


def test_hup_applies_new_settings_to_new_slots_and_keeps_sessions():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        session = login(d)
        assert not any(l.startswith(b"IMPLEMENTATION") for l in capa(d))
        (spawner,) = d.spawners()
        d.config.write_text(d.config.read_text() + "implementation: popd-test\n")
        hup(d, "SIGHUP: configuration reloaded")
        time.sleep(0.5)
        assert b"IMPLEMENTATION popd-test" in capa(d)
        # New slots come from a new spawner (it holds the new configuration
        # and certificate); the old one is gone.
        now = d.spawners()
        assert len(now) == 1 and now != [spawner]
        assert gone(spawner)
        assert session.stat()[0] == 2                  # the session went on
        session.quit()
        login(d).quit()


def test_hup_with_a_broken_config_keeps_the_running_one():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        good = d.config.read_text()
        d.config.write_text(good + "limits: {max_children: 0}\n")
        hup(d, "SIGHUP: configuration refused")
        login(d).quit()
        assert d.proc.poll() is None


def test_hup_names_keys_that_need_a_restart():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        d.config.write_text(d.config.read_text().replace(
            f"login_chroot: {d.base}/empty", f"login_chroot: {d.base}/other"))
        hup(d, "SIGHUP: configuration reloaded")
        assert "SIGHUP: login_chroot changed; these need a restart" in d.log()
        login(d).quit()


def test_hup_reloads_the_passwd_file_and_the_certificate():
    import ssl

    import trustme
    with Daemon(tls=True) as d:
        d.write_mbox("alice", MBOX)
        old = d.client_context()
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        cert.private_key_pem.write_to_path(str(d.base / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(d.base / "cert.pem"))
        os.chmod(d.base / "key.pem", 0o600)
        hup(d, "SIGHUP: configuration reloaded")
        time.sleep(0.5)
        new = ssl.create_default_context()
        ca.configure_trust(new)
        c = poplib.POP3_SSL("localhost", d.tls_port, context=new, timeout=10)
        c.user("alice")
        assert c.pass_(USERS["alice"][0]) == replies.LOGGED_IN
        c.quit()
        with pytest.raises(ssl.SSLError):
            poplib.POP3_SSL("localhost", d.tls_port, context=old, timeout=10)


def start_refused(d):
    run = subprocess.run([sys.executable, "-m", "popd", "-c", str(d.config), "-f"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 1
    return run.stderr


def test_startup_refuses_loose_permissions():
    d = Daemon()
    try:
        os.chmod(d.config, 0o664)
        err = start_refused(d)
        assert f"{d.config}" in err and "writable by group or others" in err
        assert f"chmod go-w {d.config}" in err
        os.chmod(d.config, 0o644)
        os.chmod(d.passwd_file, 0o644)
        err = start_refused(d)
        assert f"chmod o-r {d.passwd_file}" in err
        os.chmod(d.passwd_file, 0o640)
        os.chown(d.passwd_file, 60012, 60012)
        err = start_refused(d)
        assert "is not owned by root" in err and "Traceback" not in err
        os.chown(d.passwd_file, 0, 60012)
        os.chmod(d.spool, 0o777)
        err = start_refused(d)
        assert f"chmod 1777 {d.spool}" in err
        os.chmod(d.spool, 0o1777)            # sticky: fine
        d.start()
        login(d, "bob").quit()
    finally:
        d.__exit__(None, None, None)


def test_no_one_can_bind_the_listening_port_beside_popd():
    """listeners.py never sets SO_REUSEPORT, so no other socket can share
    the port: not another uid's, and not even root's with SO_REUSEPORT
    (which Linux would allow beside a listener of the same uid that set
    it too: the root squatter is the one that can tell)."""
    with Daemon() as d:
        def squat(uid):
            def attempt():
                if uid:
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    s.bind((d.host, d.port))
                    return 1
                except OSError as e:
                    return 0 if e.errno == errno.EADDRINUSE else 2
            return attempt
        assert in_child(squat(60001)) == 0
        assert in_child(squat(0)) == 0
