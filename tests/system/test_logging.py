"""Logging to syslog: facility mail, ident popd with the writer's pid, one
line per session start/end and per auth failure, client text sanitised."""
import os
import poplib
import re
import socket

import pytest

from tests import replies
from tests.clients import MBOX
from tests.daemon import USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")

LOG_MAIL = 2


def wait_for_greeting(d, timeout=30):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((d.host, d.port), timeout=5) as s:
                if s.makefile("rb").readline().startswith(replies.GREETING):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no greeting")


def test_syslog_target_facility_mail_and_sanitised_user():
    d = Daemon()
    path = str(d.base / "devlog")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    os.chmod(path, 0o666)
    d.config.write_text(d.config.read_text().replace(
        "target: stderr", f"target: syslog\n  syslog_address: {path}"))
    d.start(wait=False)
    with d:
        wait_for_greeting(d)
        d.write_mbox("alice", MBOX)
        c = poplib.POP3(d.host, d.port, timeout=10)
        c.user('ev"il\\name,rip=203.0.113.9')
        with pytest.raises(poplib.error_proto) as err:
            c.pass_("wrong")
        assert err.value.args[0] == replies.AUTH_FAILED
        c.user("alice")
        c.pass_(USERS["alice"][0])
        c.retr(1)
        c.quit()
        sink.settimeout(5)
        lines = []
        while not any("session end" in l for l in lines):
            lines.append(sink.recv(4096).decode())
    sink.close()
    for line in lines:
        m = re.match(r"<(\d+)>popd\[(\d+)\]: ", line)
        assert m, line
        assert int(m.group(1)) >> 3 == LOG_MAIL
    fail = [l for l in lines if "auth failed" in l]
    assert len(fail) == 1
    # The client's text is escaped and last on the line: it cannot fake a
    # field or break the line's shape.
    assert fail[0].rstrip("\x00\n").endswith(
        'reason=unknown-user, user="ev\\x22il\\x5cname,rip=203.0.113.9"')
    assert any('login: rip=127.0.0.1, method=PASS' in l for l in lines)
    assert any('session end: rip=127.0.0.1, user="alice", tls=none, retrieved=1, deleted=0' in l
               for l in lines)
    pids = {re.match(r"<\d+>popd\[(\d+)\]", l).group(1) for l in lines}
    assert len(pids) >= 3              # supervisor, broker, child: each its own pid


def test_session_lines_carry_the_tls_version():
    with Daemon(tls=True) as d:
        d.write_mbox("alice", MBOX)
        c = poplib.POP3_SSL("localhost", d.tls_port, context=d.client_context(), timeout=10)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        c.dele(1)
        c.quit()
        d.wait_for_log("session end:")
        start = [l for l in d.log().splitlines() if "session start:" in l][0]
        end = [l for l in d.log().splitlines() if "session end:" in l][0]
        assert 'user="alice", tls=TLSv1.3 TLS_' in start and start.endswith("messages=2")
        assert "tls=TLSv1.3" in end and "retrieved=0, deleted=1" in end


LINE = re.compile(r"(?:\S+ )?popd\[(\d+)\]: (?:\[([0-9a-f]{8})\] )?(.*)")


def test_one_connections_lines_share_one_session_id_across_processes():
    """Accept to session end: the broker's failure and login lines, the
    front's (through the child) and the session's carry one id, written by
    at least three processes; another connection has another id."""
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        c = poplib.POP3(d.host, d.port, timeout=10)
        c.user("alice")
        with pytest.raises(poplib.error_proto):
            c.pass_("wrong")
        c.user("alice")
        c.pass_(USERS["alice"][0])
        c.retr(1)
        c.quit()
        other = poplib.POP3(d.host, d.port, timeout=10)
        other.quit()
        d.wait_for_log("session end: ")
        d.wait_for_log("connection closed before login: ")
        text = d.log()
    lines = [LINE.fullmatch(line) for line in text.splitlines()]
    ours = [m for m in lines if m and m.group(3).startswith(
        ("auth failed: ", "login: ", "session start: ", "session end: "))]
    assert [m.group(3).split(":")[0] for m in ours] == [
        "auth failed", "login", "session start", "session end"], [m.group(0) for m in ours]
    ids = {m.group(2) for m in ours}
    assert len(ids) == 1 and None not in ids, [m.group(0) for m in ours]
    (session,) = ids
    writers = {m.group(1) for m in lines if m and m.group(2) == session}
    assert len(writers) >= 2          # the broker, the slot's child (front lines too)
    front = [m for m in lines if m and m.group(3).startswith("front: ")]
    assert front and all(m.group(2) for m in front)
    (closed,) = [m for m in lines if m and "connection closed before login" in m.group(3)]
    assert closed.group(2) not in (None, session)
    # Timestamps on stderr (not systemd's journal here).
    assert all(re.match(r"\d{4}-\d\d-\d\dT", line) for line in text.splitlines()
               if " popd[" in line)
