"""Issue 14: a site moves to popd from Dovecot or GNU Mailutils with mail
left on the server, and no client downloads anything again.

Each test runs the real old server from Debian's packages on a loopback
port (tests/foreign_servers.py), lets it write its ids into a real mbox
(Dovecot: dovecot-lda delivering, then a POP3 session; Mailutils: its
first session), has fetchmail (keep, uidl) and getmail6 (delete = false)
download everything from it, then stops it and starts popd on the same
port with `mail.uidl_source: [x-uidl, dovecot]` over the very same file.
popd must list the same UIDLs, id for id; both clients must then fetch
nothing, and fetch exactly the one new message delivered after the switch.
"""
import os
import poplib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from popd.broker import passwd
from tests import foreign_servers
from tests.daemon import HASH_ROUNDS, USERS, Daemon, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system tests run as root")
LOGIN = "alice"
PASSWORD, UID, _ = USERS[LOGIN]
NOBODY = 65534
MIGRATION_CONFIG = {"uidl_source": ["x-uidl", "dovecot"]}


def message(n, sender="carol@example.org"):
    return (f"From: {sender}\nTo: {LOGIN}@example.org\nSubject: migration {n}\n"
            f"Message-ID: <migration-{n}@example.org>\n\nmessage {n}\nFrom the old days\n"
            ).encode()


def mbox_entry(n):
    """A message as an MDA other than the old server appends it."""
    return (b"From carol@example.org  Thu Dec  3 16:00:%02d 2026\n" % n
            + message(n).replace(b"\nFrom the", b"\n>From the") + b"\n")


def uidl_list(port):
    c = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        c.user(LOGIN)
        c.pass_(PASSWORD)
        return [line.decode() for line in c.uidl()[1]]
    finally:
        c.quit()


class Clients:
    """fetchmail in uidl mode and getmail6, leaving mail on the server and
    remembering what they fetched, as leave-on-server users run them."""

    def __init__(self, base, port):
        self.base = Path(base)
        self.base.mkdir(mode=0o755)
        fetched = self.base / "fetchmail.out"
        fetched.touch()
        self.fetchmailrc = self.base / "fetchmailrc"
        self.fetchmailrc.write_text(
            f'set idfile "{self.base}/fetchids"\nset no bouncemail\n'
            f"poll 127.0.0.1 service {port} protocol pop3 uidl\n"
            f'  user "{LOGIN}" there password "{PASSWORD}" is root here\n'
            "  sslproto '' keep no rewrite\n"  # plain POP3: no opportunistic STLS
            f"  mda \"/bin/sh -c 'cat >> {fetched}'\"\n")
        os.chmod(self.fetchmailrc, 0o600)
        self.getmail_dir = self.base / "getmail"
        self.getmail_dir.mkdir(mode=0o700)
        got = self.base / "getmail.mbox"
        got.touch()
        os.chown(got, NOBODY, NOBODY)               # getmail delivers as nobody
        (self.getmail_dir / "getmailrc").write_text(
            "[retriever]\ntype = SimplePOP3Retriever\n"
            f"server = 127.0.0.1\nport = {port}\nusername = {LOGIN}\npassword = {PASSWORD}\n"
            f"[destination]\ntype = Mboxrd\npath = {got}\nuser = nobody\n"
            "[options]\ndelete = false\nread_all = false\nmessage_log_verbose = false\n")
        self.outputs = {"fetchmail": fetched, "getmail": got}

    def fetch(self):
        """{client: subjects it delivered this run}."""
        before = {name: self.subjects(name) for name in self.outputs}
        done = subprocess.run(["fetchmail", "-f", str(self.fetchmailrc)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stdout + done.stderr   # 1: no new mail
        done = subprocess.run(["getmail", "--getmaildir", str(self.getmail_dir)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return {name: self.subjects(name)[len(before[name]):] for name in self.outputs}

    def subjects(self, name):
        return re.findall(r"^Subject: (migration \d+)$", self.outputs[name].read_text(), re.M)


@pytest.fixture
def site():
    base = Path(tempfile.mkdtemp(prefix="popd-migration-", dir="/tmp"))
    os.chmod(base, 0o755)
    spool = base / "spool"
    spool.mkdir()
    os.chmod(spool, 0o1777)                     # dot-locks beside the mbox, like /var/mail
    try:
        yield base, spool, free_port()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def switch_to_popd(base, spool, port, clients, before, old_count):
    """Start popd on the old server's port over the same spool and check
    what its clients see; returns the daemon's log."""
    with Daemon(extra={"listen": [{"address": "127.0.0.1", "port": port, "tls": "none"}],
                       "mail": {"mbox": f"{spool}/%u", **MIGRATION_CONFIG}}) as d:
        d.port = port
        after = uidl_list(port)
        assert after == before                  # id for id, numbers too
        assert clients.fetch() == {"fetchmail": [], "getmail": []}
        with open(spool / LOGIN, "ab") as f:
            f.write(mbox_entry(99))             # delivered after the switch
        new = "migration 99"
        assert clients.fetch() == {"fetchmail": [new], "getmail": [new]}
        latest = uidl_list(port)
        assert latest[:old_count] == before and len(latest) == old_count + 1
        assert re.fullmatch(rf"{old_count + 1} [a-z2-7]{{24}}", latest[-1])
        return d.log()


@pytest.mark.skipif(not foreign_servers.dovecot_available(), reason="needs dovecot-pop3d")
def test_from_dovecot_no_client_downloads_again(site):
    base, spool, port = site
    hashed = passwd.make_hash(PASSWORD, "SHA512-CRYPT", rounds=HASH_ROUNDS)
    clients = Clients(base / "clients", port)
    dovecot = foreign_servers.Dovecot(base / "dovecot", spool, port,
                                      [f"{LOGIN}:{hashed}:{UID}:{UID}"], UID - 1)
    for n in range(1, 6):
        dovecot.deliver(LOGIN, UID, message(n))
    with open(spool / LOGIN, "ab") as f:
        f.write(mbox_entry(6))                  # another MDA: no X-UID until Dovecot syncs
    with dovecot:
        before = uidl_list(port)
        fetched = clients.fetch()
    assert len(before) == 6
    assert all(re.fullmatch(r"\d+ [0-9a-f]{16}", line) for line in before), before
    everything = [f"migration {n}" for n in range(1, 7)]
    assert fetched == {"fetchmail": everything, "getmail": everything}
    log = switch_to_popd(base, spool, port, clients, before, 6)
    assert "UIDLs kept from the file: x-uidl 0, dovecot 6; 0 of 6 messages have popd's" in log


@pytest.mark.skipif(not foreign_servers.mailutils_available(), reason="needs mailutils-pop3d")
def test_from_mailutils_no_client_downloads_again(site):
    base, spool, port = site
    mbox = spool / LOGIN
    mbox.write_bytes(b"".join(mbox_entry(n) for n in range(1, 6)))
    os.chown(mbox, UID, UID)
    os.chmod(mbox, 0o600)
    clients = Clients(base / "clients", port)
    with foreign_servers.Mailutils(base / "mailutils", spool, port, {LOGIN: (PASSWORD, UID)}):
        first = uidl_list(port)                 # its first session writes X-UIDL
        fetched = clients.fetch()
        before = uidl_list(port)
    assert before == first and len(before) == 5
    assert all(re.fullmatch(r"\d+ [0-9a-f]{32}\.\d+\.\d+", line) for line in before), before
    assert mbox.read_bytes().count(b"\nX-UIDL: ") == 5
    everything = [f"migration {n}" for n in range(1, 6)]
    assert fetched == {"fetchmail": everything, "getmail": everything}
    log = switch_to_popd(base, spool, port, clients, before, 5)
    assert "UIDLs kept from the file: x-uidl 5, dovecot 0; 0 of 5 messages have popd's" in log
