"""Issue 14: the site policies of RFC 2449 that big POP3 hosts enforce,
against the live daemon.

LOGIN-DELAY: limits.login_delay seconds between the end of a user's
session and that user's next login, kept by the broker, announced in CAPA
(before and after login) only when enforced; the right password inside
the delay gets -ERR [LOGIN-DELAY], a wrong one the usual answer."""
import os
import poplib
import time

import pytest

from tests import replies
from tests.daemon import USERS, Daemon, attempt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")
MBOX = b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\nhi\n"


def capabilities(c):
    return [line.decode() for line in c.capa_raw()] if hasattr(c, "capa_raw") else \
        [" ".join([k, *v]) for k, v in c.capa().items()]


def test_login_delay_is_enforced_from_the_end_of_the_last_session():
    with Daemon(limits={"login_delay": 3}) as d:
        d.write_mbox("alice", MBOX)
        c = poplib.POP3(d.host, d.port, timeout=30)
        assert "LOGIN-DELAY 3" in capabilities(c)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        assert "LOGIN-DELAY 3" in capabilities(c)       # after login: this user's delay
        time.sleep(1.5)                                  # counted from the session's end
        c.quit()
        ended = time.monotonic()
        reply, _ = attempt(d, "alice", USERS["alice"][0])
        assert reply == b"-ERR [LOGIN-DELAY] Logged in too recently; wait longer between logins"
        # A wrong password learns nothing of it.
        reply, _ = attempt(d, "alice", "wrong")
        assert reply == replies.AUTH_FAILED
        # Others are not held; alice is again once the delay has passed.
        reply, _ = attempt(d, "bob", USERS["bob"][0])
        assert reply == replies.LOGGED_IN
        time.sleep(max(0.0, ended + 3.2 - time.monotonic()))
        reply, _ = attempt(d, "alice", USERS["alice"][0])
        assert reply == replies.LOGGED_IN
        assert 'login refused: rip=127.0.0.1, user="alice": LOGIN-DELAY' in d.log()


def test_no_login_delay_is_announced_unless_enforced():
    with Daemon() as d:
        d.write_mbox("alice", MBOX)
        c = poplib.POP3(d.host, d.port, timeout=30)
        assert not any(x.startswith("LOGIN-DELAY") for x in capabilities(c))
        c.user("alice")
        c.pass_(USERS["alice"][0])
        assert not any(x.startswith("LOGIN-DELAY") for x in capabilities(c))
        c.quit()
        reply, _ = attempt(d, "alice", USERS["alice"][0])
        assert reply == replies.LOGGED_IN
