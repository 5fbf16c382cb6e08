"""POP3 login and the protocol around it, end to end: the real daemon as
root and real poplib clients.  Greeting, USER/PASS, STAT/LIST/RETR/QUIT,
the same answer for a wrong password and an unknown user, failed attempts
capped per connection, pipelining, commands outside their state, entries
written by popd-passwd verified by the broker.  (The threats of DESIGN.md
have their own files: test_overlong_input.py, test_timeouts.py, ...)"""
import os
import poplib
import subprocess
import sys

import pytest

from tests import replies
from tests.clients import MBOX, OCTETS, connect_raw, login
from tests.daemon import USERS, Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")


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


def test_more_pipelined_after_pass_than_one_handover_frame_is_answered(popd):
    """A client may pipeline (CAPA says PIPELINING): USER, PASS and 800
    NOOPs in one write, more than the one frame in which a cleartext
    front hands its buffered bytes to the child.  The front reads no more
    than fits, the kernel keeps the rest for the child."""
    s, f = connect_raw(popd)
    assert f.readline().startswith(replies.GREETING)
    s.sendall(b"USER alice\r\nPASS " + USERS["alice"][0].encode() + b"\r\n"
              + b"NOOP\r\n" * 800 + b"QUIT\r\n")
    answers = [f.readline().rstrip(b"\r\n") for _ in range(803)]
    assert answers[:2] == [b"+OK", replies.LOGGED_IN]
    assert answers[2:802] == [b"+OK"] * 800
    assert answers[802] == b"+OK Bye, 0 message(s) deleted"
    s.close()
    assert "internal error" not in popd.log()


def test_a_login_longer_than_40_characters_works_with_user_and_pass():
    """RFC 1939's 40 characters are what clients may count on; an address
    used as a login is often longer, and USER takes what AUTH PLAIN and
    the passwd file take (64)."""
    name = "firstname.lastname@a-rather-long-company-domain.example"
    assert 40 < len(name) <= 64
    with Daemon(users={**USERS, name: ("long-login-secret", 61040, 61040)}) as d:
        d.write_mbox(name, MBOX, uid=61040)
        c = poplib.POP3(d.host, d.port, timeout=10)
        c.user(name)
        c.pass_("long-login-secret")
        assert c.stat()[0] == 2
        c.quit()


def test_commands_outside_their_state(popd):
    s, f = connect_raw(popd)
    f.readline()
    s.sendall(b"STAT\r\nPASS x\r\nFOO\r\n")
    assert [f.readline().rstrip() for _ in range(3)] == [
        replies.BAD_STATE, b"-ERR Send USER first", replies.UNKNOWN]
    s.close()


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
