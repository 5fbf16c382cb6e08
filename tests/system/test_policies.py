"""Issue 14: the site policies big POP3 hosts enforce, against the live
daemon: LOGIN-DELAY, then EXPIRE (mail.expire_days: retrieved mail removed
at a later QUIT, through the DELE journal; the journal's crash safety is
tests/unit/test_mbox_update.py's).  Several certificates chosen by SNI
(tls.certificates) are at the end.

LOGIN-DELAY: limits.login_delay seconds between the end of a user's
session and that user's next login, kept by the broker, announced in CAPA
(before and after login) only when enforced; the right password inside
the delay gets -ERR [LOGIN-DELAY], a wrong one the usual answer."""
import os
import poplib
import shutil
import signal
import socket
import ssl
import time

import pytest
import yaml

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
        # Longer than the delay: counted from the login, the next login
        # would pass; counted from the session's end, it must wait.
        time.sleep(3.5)
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


# -- EXPIRE ---------------------------------------------------------------------------

def three_messages():
    return b"".join(b"From a@b Thu Nov 26 10:00:0%d 2026\nSubject: n%d\n\nhi %d\n\n" % (i, i, i)
                    for i in range(1, 4))


def session(d, user, *commands):
    """Log in, run poplib calls by name, quit; the QUIT answer."""
    c = poplib.POP3(d.host, d.port, timeout=30)
    c.user(user)
    c.pass_(USERS[user][0])
    for name, *args in commands:
        getattr(c, name)(*args)
    return c.quit()


def subjects(path):
    return [line.split(b": ")[1] for line in path.read_bytes().splitlines()
            if line.startswith(b"Subject: ")]


def test_expire_is_announced_exactly_as_enforced():
    for days, cap in ((None, "EXPIRE NEVER"), (0, "EXPIRE 0"), (30, "EXPIRE 30")):
        with Daemon(extra={"mail": {"expire_days": days}}) as d:
            d.write_mbox("alice", MBOX)
            c = poplib.POP3(d.host, d.port, timeout=30)
            before = [x for x in capabilities(c) if x.startswith("EXPIRE")]
            c.user("alice")
            c.pass_(USERS["alice"][0])
            after = [x for x in capabilities(c) if x.startswith("EXPIRE")]
            c.quit()
            assert before == after == [cap]


def test_expire_zero_removes_what_a_session_retrieved_at_its_quit():
    with Daemon(extra={"mail": {"expire_days": 0}}) as d:
        alice = d.write_mbox("alice", three_messages())
        bob = d.write_mbox("bob", three_messages())
        # TOP is not a retrieval; a dropped session counts nothing.
        c = poplib.POP3(d.host, d.port, timeout=30)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        c.retr(1)
        c.close()
        assert session(d, "alice", ("top", 3, 0)) == b"+OK Bye, 0 message(s) deleted"
        assert subjects(alice) == [b"n1", b"n2", b"n3"]
        assert session(d, "alice", ("retr", 2)) == b"+OK Bye, 0 message(s) deleted, 1 expired"
        assert subjects(alice) == [b"n1", b"n3"]
        assert session(d, "bob", ("stat",)) == b"+OK Bye, 0 message(s) deleted"
        assert subjects(bob) == [b"n1", b"n2", b"n3"]
        d.wait_for_log("expired=1")


def test_expire_days_count_from_the_first_retrieval_and_act_at_the_next_quit():
    with Daemon(extra={"mail": {"expire_days": 2}}) as d:
        alice = d.write_mbox("alice", three_messages())
        assert session(d, "alice", ("retr", 1), ("retr", 3)) == b"+OK Bye, 0 message(s) deleted"
        [state] = (d.base / "state" / str(USERS["alice"][1])).glob("*.retrieved")
        first = dict(line.split() for line in state.read_text().splitlines())
        assert len(first) == 2
        # Two days pass for message 1 only (the file holds the clock's
        # times; the test moves one back, as root could).
        c = poplib.POP3(d.host, d.port, timeout=30)
        c.user("alice")
        c.pass_(USERS["alice"][0])
        ids = {n: uid for n, uid in (line.decode().split() for line in c.uidl()[1])}
        c.quit()
        old = ids["1"]
        assert set(first) == {old, ids["3"]}
        state.write_text("".join(f"{u} {int(t) - (2 * 86400 if u == old else 0)}\n"
                                 for u, t in first.items()))
        with open(alice, "ab") as f:
            f.write(b"From a@b Thu Nov 26 10:00:09 2026\nSubject: n4\n\nnew\n\n")
        assert session(d, "alice", ("stat",)) == b"+OK Bye, 0 message(s) deleted, 1 expired"
        assert subjects(alice) == [b"n2", b"n3", b"n4"]
        assert session(d, "alice", ("stat",)) == b"+OK Bye, 0 message(s) deleted"
        left = dict(line.split() for line in state.read_text().splitlines())
        assert list(left) == [ids["3"]]


# -- several certificates, by SNI ---------------------------------------------------

def sni_daemon():
    """A TLS daemon whose default pair is ECDSA for localhost, with an RSA
    pair for localhost beside it and an ECDSA pair for mail.example.org
    and *.pop.example.org, all from the daemon's own CA."""
    import trustme
    d = Daemon(tls=True)
    extra = []
    for name, names, kind in (("rsa", [], trustme.KeyType.RSA),
                              ("mail", ["mail.example.org", "*.pop.example.org"],
                               trustme.KeyType.ECDSA)):
        leaf = d.ca.issue_cert(*(names or ["localhost"]), common_name=(names or ["localhost"])[0],
                               key_type=kind)
        cert, key = d.base / f"{name}-cert.pem", d.base / f"{name}-key.pem"
        leaf.private_key_pem.write_to_path(str(key))
        os.chmod(key, 0o600)
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        extra.append({"cert": str(cert), "key": str(key), "names": names})
    cfg = yaml.safe_load(d.config.read_text())
    cfg["tls"]["certificates"] = extra
    d.config.write_text(yaml.safe_dump(cfg))
    return d


def handshake(d, server_name, rsa_only=False):
    """(subject CN, cipher) the daemon's implicit-TLS port presents."""
    ctx = ssl.create_default_context(cafile=str(d.ca_file))
    ctx.check_hostname = False
    if rsa_only:                        # a TLS 1.2 client that knows only RSA suites
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    with socket.create_connection((d.host, d.tls_port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"], s.cipher()[0]


def test_sni_picks_the_named_pair_and_key_types_share_a_name():
    d = sni_daemon()
    with d:
        assert handshake(d, "localhost")[0] == "localhost"
        assert handshake(d, "mail.example.org")[0] == "mail.example.org"
        assert handshake(d, "MAIL.example.org")[0] == "mail.example.org"
        assert handshake(d, "a.pop.example.org")[0] == "mail.example.org"    # *.pop
        assert handshake(d, "b.a.pop.example.org")[0] == "localhost"       # one label only
        assert handshake(d, "unknown.example.net")[0] == "localhost"
        name, cipher = handshake(d, "localhost", rsa_only=True)
        assert name == "localhost" and "RSA" in cipher                      # the RSA pair
        # A login works over the named pair too.
        ctx = ssl.create_default_context(cafile=str(d.ca_file))
        ctx.check_hostname = False
        d.write_mbox("alice", MBOX)

        raw = socket.create_connection((d.host, d.tls_port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="mail.example.org") as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"+OK")
            s.sendall(b"USER alice\r\nPASS %s\r\nSTAT\r\nQUIT\r\n" % USERS["alice"][0].encode())
            answers = [f.readline() for _ in range(4)]
        assert answers[1] == replies.LOGGED_IN + b"\r\n" and answers[2].startswith(b"+OK 1 ")


def test_each_extra_pair_passes_the_start_up_checks():
    d = sni_daemon()
    try:
        os.chmod(d.base / "mail-key.pem", 0o644)
        run = d.launch(capture_output=True, text=True)
        assert run.returncode == 1
        assert "(tls.certificates[1].key) is readable by others" in run.stderr, run.stderr
    finally:
        shutil.rmtree(d.base, ignore_errors=True)


def test_a_new_certificate_at_the_same_path_is_served_after_sighup():
    d = sni_daemon()
    with d:
        assert handshake(d, "mail.example.org")[0] == "mail.example.org"
        leaf = d.ca.issue_cert("mail.example.org", common_name="renewed.example.org")
        leaf.private_key_pem.write_to_path(str(d.base / "mail-key.pem"))
        (d.base / "mail-cert.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("SIGHUP: configuration reloaded")
        deadline = time.monotonic() + 10
        while handshake(d, "mail.example.org")[0] != "renewed.example.org":
            assert time.monotonic() < deadline, "the renewed certificate is not served"
            time.sleep(0.3)
